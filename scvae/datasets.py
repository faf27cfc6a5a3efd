"""Small real single-cell datasets shipped with scvae (raw UMI counts), loadable offline.

Each function reads a fresh copy from the package's data folder; see ``data/README.md`` for provenance.
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad

_FILES = {
    "pbmc68k": "pbmc68k_counts.h5ad",
    "kang": "kang_ifnb_counts.h5ad",
    "cellbench": "cellbench_counts_hvg3000.h5ad",
}


def data_dir() -> Path:
    """Where the bundled files are: ``$SCVAE_DATA_DIR``, the installed package's ``_data``, or the source
    tree's ``data/``.

    Returns
    -------
    The folder's path."""
    candidates = [Path(p) for p in [os.environ.get("SCVAE_DATA_DIR")] if p]
    here = Path(__file__).resolve().parent
    candidates += [here / "_data", here.parent / "data"]
    for path in candidates:
        if (path / _FILES["pbmc68k"]).is_file():
            return path
    raise FileNotFoundError(
        f"scvae's bundled data were not found (looked in {[str(p) for p in candidates]}); reinstall scvae or "
        "set SCVAE_DATA_DIR to the repository's data/ folder"
    )


def _read(name: str) -> ad.AnnData:
    return ad.read_h5ad(data_dir() / _FILES[name])


def pbmc68k() -> ad.AnnData:
    """700 PBMCs × 765 genes, raw counts, 10 cell types in ``obs['cell_type']`` (Zheng et al. 2017, as
    subsampled in Scanpy's ``pbmc68k_reduced``, counts recovered from its log-normalised ``.raw``).

    Returns
    -------
    A new AnnData, counts in ``X`` (CSR)."""
    return _read("pbmc68k")


def kang() -> ad.AnnData:
    """2,754 PBMCs × 9,015 genes, raw counts, control vs 6 h interferon-β (Kang et al. 2018), with
    ``obs['condition']`` (control / stimulated) and ``obs['cell_type']`` (9 types).

    Returns
    -------
    A new AnnData, counts in ``X`` (CSR)."""
    return _read("kang")


def cellbench() -> ad.AnnData:
    """1,408 cells × 3,000 highly variable genes, raw counts, five lung-adenocarcinoma lines in five batches
    over two technologies (CellBench, Tian et al. 2019): ``obs['batch']``, ``obs['tech']``,
    ``obs['cell_type']``.

    Returns
    -------
    A new AnnData, counts in ``X`` (CSR)."""
    return _read("cellbench")
