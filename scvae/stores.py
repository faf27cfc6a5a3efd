"""Cells on disk, read lazily through anndata's own readers: zarr stores (:func:`open_zarr`) and collections of
several .h5ad or zarr files (:func:`open_files`, or any ``anndata.experimental.AnnCollection`` of backed files).

:func:`scvae.model.fit`, ``model.get_latent`` (and the other outputs) and ``model.map_query`` take these as they
take an in-memory AnnData. ``X`` (or the layer) is read in blocks of contiguous cells, file by file, and never
whole; nothing is concatenated and no file is changed.

Where things live in a collection: each file's genes are matched by name (the inner join: the genes every file
has, in the first file's order); the labels (``batch_key``, ``condition_key``, ...) are read from the
collection's ``obs``, the inner join of the files' ``obs`` columns plus the column ``label`` (default
``"file"``) that says which file a cell came from, so ``batch_key="file"`` treats every file as a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.experimental import AnnCollection

from .data import InputError, get_matrix, validate_matrix
from .stacked import Stacked

logger = logging.getLogger(__name__)

_SPARSE = ("csr_matrix", "csc_matrix")


def is_collection(cells: Any) -> bool:
    return isinstance(cells, AnnCollection)


def _lazy(elem: Any, where: str) -> Any:
    """A zarr/h5py element of an AnnData store as a lazily read matrix (anndata's sparse dataset, or the array)."""
    kind = dict(elem.attrs).get("encoding-type")
    if kind == "csc_matrix":
        raise InputError(
            f"{where} is stored as CSC (by gene); training reads cells: rewrite it by cell, e.g. "
            "adata.X = adata.X.tocsr(); adata.write_zarr(path)"
        )
    return ad.io.sparse_dataset(elem) if kind in _SPARSE else elem


def _lazy_anndata(group: Any, path: Path, write: str) -> AnnData:
    """An AnnData of the store or file ``group`` with ``obs``, ``var`` and ``uns`` read and ``X`` and the layers
    left on disk (``write``: the call that writes such a store, named in messages)."""
    if "obs" not in group or "var" not in group:
        raise InputError(f"{path} is not an AnnData store (it has no obs/var); write one with {write}")
    layers = (
        {k: _lazy(group["layers"][k], f"{path}: layers[{k!r}]") for k in group["layers"]} if "layers" in group else {}
    )
    x = _lazy(group["X"], f"{path}: X") if "X" in group else None
    if x is None and not layers:
        raise InputError(f"{path} holds no counts: neither X nor any layer; write the counts with {write}")
    obs, var = ad.io.read_elem(group["obs"]), ad.io.read_elem(group["var"])
    uns = ad.io.read_elem(group["uns"]) if "uns" in group else {}
    return AnnData(X=x, obs=obs, var=var, layers=layers, uns=uns)


def open_zarr(path: str | Path) -> AnnData:
    """An AnnData zarr store (written by ``adata.write_zarr``) with ``obs``, ``var`` and ``uns`` in memory and
    ``X`` and the layers left on disk, read lazily; the store is opened read-only.

    Parameters
    ----------
    path
        The store's folder.

    Returns
    -------
    An in-memory AnnData whose ``X`` and layers read from the store; results written to it (``obsm``, ``uns``)
    stay in memory (save them with ``adata.write_zarr`` to a new path).
    """
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"zarr store {path} does not exist")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - whatever zarr raises, the path is not a readable store
        raise InputError(f"{path} could not be opened as a zarr store ({type(err).__name__}: {err})") from err
    return _lazy_anndata(group, path, "adata.write_zarr")


def _open_h5ad(path: Path) -> AnnData:
    """An .h5ad file opened read-only as :func:`open_zarr` opens a store, without HDF5's chunk cache: scvae reads
    each chunk once, in order, so a cache (which ``read_h5ad(backed="r")`` gives every matrix, and which block
    reads fill and nothing empties) would only hold memory, more with every file of a collection."""
    import h5py

    group = None
    try:
        group = h5py.File(path, "r", rdcc_nbytes=0)
        return _lazy_anndata(group, path, "adata.write_h5ad")
    except InputError:
        group.close()
        raise
    except Exception as err:  # noqa: BLE001 - anything h5py/anndata raises means: not a readable .h5ad
        if group is not None:
            group.close()
        raise InputError(f"{path} could not be read as an .h5ad file ({type(err).__name__}: {err})") from err


def _open(path: Path) -> AnnData:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; check the path (every file of the collection is needed)")
    if path.suffix == ".h5ad":
        return _open_h5ad(path)
    if path.suffix == ".zarr" or path.is_dir():
        return open_zarr(path)
    raise InputError(f"{path} is neither an .h5ad file nor a zarr store; convert it first (adata.write_h5ad)")


def open_files(paths: Sequence[str | Path], *, label: str = "file", keys: Sequence[str] | None = None) -> AnnCollection:
    """Several .h5ad files or zarr stores (``X`` and the layers left on disk) as one ``AnnCollection``: the genes
    all files share (in the first file's order), the ``obs`` columns all files share, and ``obs[label]``, the file
    each cell came from (``keys``: its names; default the file names without suffix). Nothing is read but ``obs``
    and ``var``.

    Parameters
    ----------
    paths
        The .h5ad files and zarr stores, in order.
    label
        Name of the ``obs`` column that records each cell's file (use it as ``fit``'s ``batch_key``).
    keys
        The values of ``obs[label]``, one per file; default the file names without their suffix.

    Returns
    -------
    An ``AnnCollection`` to pass to :func:`scvae.model.fit` or a trained model's methods; it holds no results.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no files given; pass the paths of the .h5ad files or zarr stores to read")
    adatas = [_open(p) for p in paths]
    for p, a in zip(paths, adatas):
        if not a.var_names.is_unique:
            raise InputError(f"{p}: var_names are not unique; make them unique there (adata.var_names_make_unique())")
    shared = pd.Index(adatas[0].var_names)
    for a in adatas[1:]:
        shared = shared[shared.isin(a.var_names)]
    if len(shared) == 0:
        first = "; ".join(f"{p.name}: {list(a.var_names[:3])}" for p, a in zip(paths, adatas))
        raise InputError(
            f"the files share no gene names ({first}); genes are matched by name: use the same gene identifiers "
            "(e.g. all symbols or all Ensembl ids) in every file's var_names"
        )
    dropped = {p.name: a.n_vars - len(shared) for p, a in zip(paths, adatas) if a.n_vars > len(shared)}
    if dropped:
        logger.warning(
            "using the %d genes every file has; genes only some files have are left out: %s", len(shared), dropped
        )
    keys = list(keys) if keys is not None else [p.stem for p in paths]
    if len(set(keys)) != len(keys):
        raise InputError(
            f"the files' keys (by default their names without the suffix) must differ, got {keys}; pass keys= to "
            "name them, or give files with different names (the command line names them by their files)"
        )
    names = pd.Index(np.concatenate([np.asarray(a.obs_names) for a in adatas]))
    collection = AnnCollection(
        adatas,
        join_obs="inner",
        join_vars="inner",
        label=label,
        keys=keys,
        index_unique=None if names.is_unique else "-",
    )
    collection.scvae_files = [str(p) for p in paths]  # named in the messages of later errors
    return collection


def file_names(collection: AnnCollection) -> list[str]:
    """The files of ``collection`` (as opened by :func:`open_files`, or the backed files' names)."""
    given = getattr(collection, "scvae_files", None)
    if given:
        return list(given)
    return [str(getattr(a, "filename", None) or f"part {i}") for i, a in enumerate(collection.adatas)]


def _part(adata: AnnData, layer: str | None, name: str) -> Any:
    """The counts of one file of a collection, left on disk."""
    where = "X" if layer is None else f"layers[{layer!r}]"
    if layer is None and adata.X is not None:
        return get_matrix(adata, None, name)
    if layer is not None and adata.isbacked and f"layers/{layer}" in adata.file:
        # a backed file's layers are held in memory by anndata; read this one from disk instead
        return _lazy(adata.file[f"layers/{layer}"], f"{name}: {where}")
    if layer is not None and not adata.isbacked and layer in adata.layers:
        return get_matrix(adata, layer, name)
    raise InputError(f"{name} has no {where}; every file needs the counts in the same place (X, or the same layer)")


def collection_matrix(collection: AnnCollection, layer: str | None, genes: Sequence[str] | None = None) -> Stacked:
    """The cells × genes matrix of every file of ``collection``, one after another, with the columns ``genes``
    (default: the collection's), read lazily."""
    genes = pd.Index(collection.var_names if genes is None else genes)
    names, parts, columns = file_names(collection), [], []
    for name, adata in zip(names, collection.adatas):
        parts.append(_part(adata, layer, name))
        idx = pd.Index(adata.var_names).get_indexer(genes)
        if (idx < 0).any():
            missing = list(genes[idx < 0][:5])
            raise InputError(
                f"{name} lacks {int((idx < 0).sum())} of the model's genes (e.g. {missing}); every file needs them"
            )
        columns.append(None if np.array_equal(idx, np.arange(adata.n_vars)) else idx)
    return Stacked(parts, columns, names)


def matrix(cells: AnnData | AnnCollection, layer: str | None, name: str = "adata") -> Any:
    """The cells × genes matrix of an AnnData (:func:`scvae.data.get_matrix`, messages calling it ``name``) or of
    a collection."""
    return collection_matrix(cells, layer) if is_collection(cells) else get_matrix(cells, layer, name)


def validate(x: Any, likelihood: str, *, counts: bool, where: str) -> None:
    """:func:`scvae.data.validate_matrix` of a matrix, or of each file of a collection's (:class:`Stacked`) in
    turn, with the file named in the message."""
    if not isinstance(x, Stacked):
        return validate_matrix(x, likelihood, counts=counts, where=where)
    for part, cols, name in zip(x.parts, x.columns, x.names):
        validate_matrix(Stacked([part], [cols], [name]), likelihood, counts=counts, where=f"{name}: {where}")


def check_labels(cells: AnnData | AnnCollection, keys: Sequence[str]) -> None:
    """For a collection: every label column ``keys`` in every file (the collection keeps only shared columns)."""
    if not is_collection(cells):
        return
    for key in keys:
        if key in cells.obs.columns:
            continue
        lacking = [n for n, a in zip(file_names(cells), cells.adatas) if key not in a.obs.columns]
        if lacking:
            raise InputError(
                f"obs column {key!r} is missing from {', '.join(lacking)}; the collection keeps only the obs columns "
                "every file has. Add the column to those files (e.g. adata.obs[key] = ...) or choose another"
            )
