"""AnnData → validated matrices, label codes and train/validation splits (minibatches: :mod:`scvae.loaders`).

Nothing here writes to the AnnData it is given. A backed (on-disk) matrix is read and checked block by block.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .loaders import is_backed_matrix, release_freed_memory

logger = logging.getLogger(__name__)

Matrix = np.ndarray | sp.csr_matrix

_CHUNK = 4096  # rows checked at a time when validating a dense matrix (× 1024: values of a sparse one)
_BACKED_BLOCK = 16384  # rows read at a time when validating an on-disk matrix


class InputError(ValueError):
    """Raised when the AnnData or an argument cannot be used as given; the message says what to do."""


def check_int(name: str, value: Any, minimum: int = 1, *, optional: bool = False) -> int | None:
    """``value`` as an int, or an :class:`InputError` naming ``name`` unless it is an integer >= ``minimum``
    (not a bool; None too when ``optional``)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
        raise InputError(f"{name} must be {kind}{' or None' if optional else ''}, got {value!r}")
    return int(value)


SEED_MAX = 2**32 - 1  # numpy's generators take seeds in [0, 2**32) as one integer; torch takes those too


def check_seed(value: Any) -> int:
    """``seed`` as an int, or an :class:`InputError` unless it is an integer in [0, 2**32 − 1] (numpy's and
    torch's generators both take those)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= SEED_MAX:
        raise InputError(f"seed must be an integer in [0, {SEED_MAX}], got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool, or an :class:`InputError` naming ``name`` unless it is True or False (a string such
    as ``"no"`` would otherwise count as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def uns_key(key_added: str) -> str:
    """Where a run that writes ``obsm[key_added]`` records itself in ``uns``: ``key_added`` without a leading
    ``"X_"`` (``"X_scvae"``, the default, records in ``uns["scvae"]``), so that runs written under different keys
    keep their own records."""
    return key_added[2:] if key_added.startswith("X_") and len(key_added) > 2 else key_added


def check_key_added(value: Any, adata: Any = None) -> str:
    """``key_added`` as given, or an :class:`InputError` unless it is a non-empty string whose slots,
    ``adata.obsm[value]`` and ``adata.uns[uns_key(value)]``, are free or hold an earlier run's results under the
    same key (so that, e.g., ``key_added="X_pca"`` replaces neither Scanpy's ``obsm["X_pca"]`` nor ``uns["pca"]``)."""
    if not isinstance(value, str) or not value:
        raise InputError(f"key_added must be a non-empty string (the obsm key to write), got {value!r}")
    held = getattr(adata, "uns", {}).get(uns_key(value))
    if (held is not None or value in (getattr(adata, "obsm", None) or {})) and not (
        isinstance(held, Mapping) and held.get("key_added") == value
    ):
        raise InputError(
            f"key_added={value!r} would replace adata.obsm[{value!r}] and adata.uns[{uns_key(value)!r}], which hold "
            f"something else; choose another key_added (e.g. 'X_scvae'), or delete those first"
        )
    return value


def check_number(
    name: str, value: Any, *, low: float = -math.inf, high: float = math.inf, strict: bool = False
) -> float:
    """``value`` as a float, or an :class:`InputError` naming ``name`` unless it is a real number (not a bool or
    NaN) in [low, high) (``strict``: (low, high))."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not real or math.isnan(value) or not (value > low if strict else value >= low) or not value < high:
        if math.isinf(high):
            span = f"{'>' if strict else '>='} {low:g}"
        else:
            span = f"in {'(' if strict else '['}{low:g}, {high:g})"
        raise InputError(f"{name} must be a number {span}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, options: Sequence[str]) -> str:
    """``value``, or an :class:`InputError` naming ``name`` unless it is one of ``options``."""
    if value not in options:
        raise InputError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return str(value)


# -- matrices ------------------------------------------------------------------------------------------------
def refuse_view(adata: AnnData, name: str = "adata") -> None:
    """Raise a clear error when ``adata`` is a view: results written into a view would be lost or copied."""
    if adata.is_view:
        raise InputError(
            f"{name} is a view of another AnnData (e.g. adata[mask]); results cannot be written into a view. "
            f"Make it an object of its own first: {name} = {'adata[mask].to_memory()' if adata.isbacked else 'adata[mask].copy()'}"
        )


def data_location(layer: str | None, name: str = "adata") -> str:
    """Where the data are, as the user would write it in an error message: ``adata.X`` or
    ``adata.layers['counts']``, with the caller's own name for the AnnData (``query``, ``real_stim``)."""
    return f"{name}.X" if layer is None else f"{name}.layers[{layer!r}]"


def get_matrix(adata: AnnData, layer: str | None, name: str = "adata") -> Matrix:
    """The cells × genes matrix (``adata.X`` or ``adata.layers[layer]``) as CSR or a dense ndarray; messages call
    the AnnData ``name``.

    CSR and dense arrays are returned without a copy; other sparse formats are converted."""
    if not isinstance(adata, AnnData):
        raise InputError(f"{name}: expected an AnnData object, got {type(adata).__name__}")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"{name} is empty ({adata.n_obs} cells × {adata.n_vars} genes); it needs both")
    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"layer {layer!r} is not in {name}.layers (available: {list(adata.layers.keys()) or 'none'}); add it "
            f"({name}.layers[{layer!r}] = counts): a model reads the layer it was fitted on (fit reads X with layer=None)"
        )
    x, where = (adata.X if layer is None else adata.layers[layer]), data_location(layer, name)
    if x is None:
        raise InputError(f"{where} is empty (None); put the counts there or pass layer=")
    if is_backed_matrix(x):  # on disk (backed AnnData): read block by block, never whole
        if not (hasattr(x, "dtype") and np.dtype(x.dtype).kind in "biuf"):
            raise InputError(f"{where} has dtype {getattr(x, 'dtype', None)}; it must be numeric")
        return x
    if sp.issparse(x):
        x = x if x.format == "csr" else sp.csr_matrix(x)
    elif not isinstance(x, np.ndarray):
        x = np.asarray(x.toarray() if hasattr(x, "toarray") else x)
    if x.dtype.kind not in "biuf":
        raise InputError(f"{where} has dtype {x.dtype}; it must be numeric")
    return x


def _values(x: Matrix) -> Iterator[np.ndarray]:
    """The stored values of ``x`` in chunks (non-zeros only for sparse), so that checks need little memory."""
    if sp.issparse(x):
        for start in range(0, x.nnz, _CHUNK * 1024):
            yield x.data[start : start + _CHUNK * 1024]
    else:
        for start in range(0, x.shape[0], _CHUNK):
            yield x[start : start + _CHUNK]


def _blocks(x: Matrix) -> Iterator[Matrix]:
    """``x`` itself, or an on-disk matrix as in-memory blocks of ``_BACKED_BLOCK`` rows."""
    if not is_backed_matrix(x):
        yield x
        return
    for start in range(0, x.shape[0], _BACKED_BLOCK):
        release_freed_memory()
        block = x[start : start + _BACKED_BLOCK]
        yield block if sp.issparse(block) else np.asarray(block)


def validate_matrix(x: Matrix, likelihood: str, *, counts: bool, where: str = "adata.X") -> None:
    """Refuse NaN/inf everywhere, and negative or non-integer values or empty cells when ``counts`` (the
    ``likelihood``, named in the messages, models counts: ``likelihoods.COUNT_LIKELIHOODS``).

    A backed (on-disk) matrix is checked block by block."""
    empty = 0
    for block in _blocks(x):
        for chunk in _values(block):
            _check_values(chunk, counts, likelihood, where)
        if counts:
            empty += int((np.asarray(block.sum(axis=1)).ravel() == 0).sum())
    if empty:
        raise InputError(
            f"{empty} cells have zero total counts in {where}; a count model cannot use them. "
            "Remove them first: sc.pp.filter_cells(adata, min_counts=1)"
        )


def _check_values(chunk: np.ndarray, counts: bool, likelihood: str, where: str) -> None:
    if chunk.dtype.kind == "f":
        if not np.isfinite(chunk).all():
            raise InputError(
                f"{where} contains NaN or infinite values; remove or impute them first "
                "(e.g. keep the genes whose values are all finite, X being the matrix named here: "
                "adata = adata[:, np.isfinite(np.asarray(X.sum(0))).ravel()].copy())"
            )
        if chunk.dtype.itemsize > 4 and (np.abs(chunk) > np.finfo(np.float32).max).any():
            raise InputError(
                f"{where} has values beyond float32's range (3.4e38), which become infinite in training; rescale them"
            )
    if counts:
        if (chunk < 0).any():
            raise InputError(
                f"{where} has negative values, but likelihood={likelihood!r} models raw counts; "
                "pass the raw counts (layer='counts' if they are in a layer) or use likelihood='gaussian'"
            )
        if chunk.dtype.kind == "f" and not np.all(chunk == np.round(chunk)):
            raise InputError(
                f"{where} has non-integer values, but likelihood={likelihood!r} models raw counts; "
                "pass the raw (unnormalised) counts (layer='counts' if they are in a layer) or use "
                "likelihood='gaussian' for log-normalised data"
            )


# -- genes ---------------------------------------------------------------------------------------------------
def align_genes(adata: AnnData, genes: Sequence[str], name: str = "adata") -> np.ndarray | None:
    """Column indices of ``adata`` (called ``name`` in messages) that give the model's ``genes`` in order, or None
    if they already match."""
    names = pd.Index(adata.var_names).astype(str)  # the model keeps gene names as strings
    if len(names) == len(genes) and (names == pd.Index(genes)).all():
        return None
    if not names.is_unique:
        raise InputError(f"{name}.var_names are not unique; call {name}.var_names_make_unique() first")
    idx = names.get_indexer(pd.Index(genes))
    missing = [g for g, i in zip(genes, idx) if i < 0]
    if missing:
        raise InputError(
            f"{len(missing)} of the model's {len(genes)} genes are missing from {name}.var_names "
            f"(e.g. {missing[:5]}); the model needs the genes it was trained on (any order; extra genes are "
            "ignored)"
        )
    extra = len(names) - len(genes)
    if extra:
        logger.info("using the model's %d genes; %d other genes in %s are ignored", len(genes), extra, name)
    return idx


# -- labels --------------------------------------------------------------------------------------------------
class CategoryEncoder:
    """Maps the categorical obs columns a model conditions on to integer codes, with fixed category orders."""

    def __init__(self, categories: dict[str, list[str]]) -> None:
        self.categories = {k: [str(c) for c in v] for k, v in categories.items()}

    @property
    def keys(self) -> list[str]:
        return list(self.categories)

    @classmethod
    def fit(cls, adata: AnnData, keys: Sequence[str]) -> CategoryEncoder:
        cats: dict[str, list[str]] = {}
        for key in keys:
            col = obs_column(adata, key)
            if isinstance(col.dtype, pd.CategoricalDtype):  # the categories some cell has
                raw = col.cat.categories[np.bincount(col.cat.codes, minlength=len(col.cat.categories)) > 0]
            else:
                raw = pd.factorize(col)[1]
                if col.dtype.kind == "f" and (np.mod(raw, 1) != 0).any():
                    raise InputError(
                        f"adata.obs[{key!r}] holds continuous numbers ({len(raw)} distinct values, e.g. "
                        f"{raw[0]!r}); a label must be a category (a batch, a condition). If these numbers are "
                        f"categories, convert them: adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)"
                    )
            as_text = pd.Series(label_texts(raw))
            if as_text.duplicated().any():  # e.g. 1 and "1": one label once written as text
                same = as_text[as_text.duplicated(keep=False)].index
                raise InputError(
                    f"adata.obs[{key!r}] holds values that differ but read the same as text "
                    f"({[raw[i] for i in same][:4]}); make them one type, e.g. "
                    f"adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)"
                )
            cats[key] = category_order(col, present_only=True)
        return cls(cats)

    def encode(self, adata: AnnData, overrides: dict[str, str] | None = None, name: str = "adata") -> np.ndarray:
        """(cells, n_keys) int64 codes; ``overrides`` sets a key to one category for every cell; messages call the
        AnnData ``name``."""
        overrides = overrides or {}
        unknown = set(overrides) - set(self.categories)
        if unknown:
            raise InputError(f"cannot set {sorted(unknown)}: the model is conditioned on {self.keys or 'no labels'}")
        codes = np.zeros((adata.n_obs, len(self.categories)), dtype=np.int64)
        for j, (key, order) in enumerate(self.categories.items()):
            lookup = {c: i for i, c in enumerate(order)}
            for c, i in list(lookup.items()):  # models saved before labels were written as label_texts: "1.0"
                if c.endswith(".0") and c[:-2].lstrip("-").isdigit():
                    lookup.setdefault(c[:-2], i)
            if key in overrides:
                value = label_texts([overrides[key]])[0]
                if value not in lookup:
                    raise InputError(f"{value!r} is not a category of {key!r}; the model knows {order}")
                codes[:, j] = lookup[value]
                continue
            names, cell_codes = label_codes(obs_column(adata, key, owner=name))  # by category, not cell by cell
            present = np.bincount(cell_codes, minlength=len(names)) > 0
            unseen = sorted(c for c, p in zip(names, present) if p and c not in lookup)
            mapped = np.array([lookup.get(c, -1) for c in names], dtype=np.int64)[cell_codes]
            if unseen:
                raise InputError(
                    f"{name}.obs[{key!r}] has categories the model never saw: {unseen[:5]}; the model knows "
                    f"{order}. Map them to known categories, or train on data that includes them"
                )
            codes[:, j] = mapped
        return codes


def label_texts(values: Any) -> list[str]:
    """Labels as text, whole numbers stored as floats written as integers (1.0 → "1"), so that a label reads the
    same whether a column holds 1, 1.0 or "1"."""
    return [str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v) for v in values]


def label_codes(col: pd.Series) -> tuple[list[str], np.ndarray]:
    """An obs column as its distinct labels (:func:`label_texts`; categories in their own order for a categorical
    column, else in order of appearance) and each cell's index into them; a missing value reads "nan"."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes, uniques = col.cat.codes.to_numpy(), col.cat.categories
    else:
        codes, uniques = pd.factorize(col)
    names = label_texts(uniques)
    if (codes < 0).any():  # NaN: code -1, which picks the "nan" appended last
        names, codes = [*names, "nan"], np.where(codes < 0, len(names), codes)
    return names, np.asarray(codes, dtype=np.int64)


def label_text(col: pd.Series) -> pd.Series:
    """An obs column's labels as strings (:func:`label_texts`), with the column's index."""
    names, codes = label_codes(col)
    return pd.Series(np.asarray(names, dtype=object)[codes], index=col.index, name=col.name)


def category_order(col: pd.Series, *, present_only: bool = False) -> list[str]:
    """The categories of an obs column as strings (:func:`label_texts`), in the column's own order if it is
    categorical (only those some cell has, with ``present_only``), else sorted."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories
        if present_only:
            cats = cats[np.bincount(col.cat.codes[col.cat.codes >= 0], minlength=len(cats)) > 0]
        return label_texts(cats)
    return sorted(set(label_codes(col.dropna())[0]))  # the texts encode() reads (pandas' own, e.g. for dates)


def obs_column(adata: AnnData, key: str, what: str | None = None, owner: str = "adata") -> pd.Series:
    """``adata.obs[key]``, with a clear error when it is missing or has NaN (``what``: the argument's name;
    ``owner``: the AnnData's name in the message)."""
    if key not in adata.obs.columns:
        raise InputError(
            f"{f'{what}=' if what else ''}{key!r} is not a column of {owner}.obs (columns: "
            f"{list(adata.obs.columns)[:10]}); check the spelling or add the labels first"
        )
    col = adata.obs[key]
    if col.isna().any():
        raise InputError(
            f"{owner}.obs[{key!r}] has {int(col.isna().sum())} missing values (NaN); drop those cells or fill them "
            f"(e.g. {owner}.obs[{key!r}] = {owner}.obs[{key!r}].astype(str), which makes them a category 'nan')"
        )
    return col


def as_label_list(value: Any) -> list[str]:
    """One label or a list of labels (a string, a number, or a list/array of them) as a list of label texts."""
    many = isinstance(value, (list, tuple, set, np.ndarray, pd.Index, pd.Series))
    return label_texts(list(value) if many else [value])


@dataclass
class DataSpec:
    """What a model reads from AnnData, saved with it (nothing is registered on ``adata``): its genes in order,
    the layer that holds the data (None: ``adata.X``), and the labels it is conditioned on with their category
    orders; ``batch_key`` and ``condition_key`` say which of the labels play those parts."""

    genes: list[str]
    categories: dict[str, list[str]] = field(default_factory=dict)
    layer: str | None = None
    batch_key: str | None = None
    condition_key: str | None = None
    covariate_keys: list[str] = field(default_factory=list)

    def where(self, name: str = "adata") -> str:
        """Where the data are, as the user would write it in an error message (``name``: the AnnData's)."""
        return data_location(self.layer, name)

    def index(self, key: str | None) -> int | None:
        """Position of label ``key`` among the labels, or None when the model has no such label."""
        keys = list(self.categories)
        return keys.index(key) if key in keys else None


# -- splits --------------------------------------------------------------------------------------------------
def split_indices(n: int, validation_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split; no validation cells when ``validation_size`` is 0."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * validation_size))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def log_normalize(adata: AnnData, *, layer: str | None = None, target_sum: float = 1e4) -> np.ndarray | sp.csr_matrix:
    """``log1p(x / total × target_sum)`` of every cell, as a new float32 matrix (CSR if the input is sparse).

    Cells with zero total stay zero. ``adata`` is not modified.

    Parameters
    ----------
    adata
        Cells × genes, counts (or any non-negative values) in ``X`` or ``layer``.
    layer
        Read ``adata.layers[layer]`` instead of ``adata.X``.
    target_sum
        Total each cell is scaled to before ``log1p`` (counts per ``target_sum``).

    Returns
    -------
    Cells × genes, float32: a CSR matrix if the input is sparse, else a dense ndarray.
    """
    return normalized_matrix(adata, layer=layer, target_sum=target_sum)


def normalized_matrix(
    adata: AnnData, *, layer: str | None = None, target_sum: float = 1e4, name: str = "adata"
) -> np.ndarray | sp.csr_matrix:
    """:func:`log_normalize`, with error messages that call the AnnData ``name`` (the caller's argument)."""
    target_sum = check_number("target_sum", target_sum, low=0.0, strict=True)
    where = data_location(layer, name)
    parts = []
    for block in _blocks(get_matrix(adata, layer, name)):  # an on-disk matrix block by block, never whole
        for chunk in _values(block):  # finite and non-negative (counts or any amounts); integers not required
            _check_values(chunk, False, "", where)
            if (chunk < 0).any():
                raise InputError(
                    f"{where} has negative values; log-normalisation needs counts (or other non-negative "
                    "amounts): pass the raw counts (layer='counts' if they are in a layer)"
                )
        totals = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        scale = target_sum / np.where(totals > 0, totals, 1.0)
        if sp.issparse(block):
            out = sp.csr_matrix(sp.diags(scale) @ block, dtype=np.float32)
            out.data = np.log1p(out.data)
        else:
            out = np.log1p(np.asarray(block, dtype=np.float64) * scale[:, None]).astype(np.float32)
        parts.append(out)
    if len(parts) == 1:
        return parts[0]
    return sp.csr_matrix(sp.vstack(parts, format="csr")) if sp.issparse(parts[0]) else np.concatenate(parts)
