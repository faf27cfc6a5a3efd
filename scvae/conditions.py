"""Cells by condition and cell type, for perturbation prediction without a model: validation of the labels,
the cell types a response is learnt from, balanced draws and mean expression of a group of cells.
:mod:`scvae.baselines` and :mod:`scvae.perturbation` build on these."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .data import (
    InputError,
    category_order,
    check_int,
    check_seed,
    label_text,
    label_texts,
    obs_column,
)
from .loaders import to_dense_float

logger = logging.getLogger(__name__)

UNS_KEY = "scvae_perturbation"
EXPRESSION_LAYER = "expression"  # predicted cells on the scale they are scored on (predict_perturbation)


# -- validation ------------------------------------------------------------------------------------------------
def _labels(adata: AnnData, key: str, what: str) -> pd.Series:
    """``adata.obs[key]`` as strings, with a clear error when it is missing or has NaN."""
    if not isinstance(key, str):
        raise InputError(f"{what} must be the name of an adata.obs column (a string), got {key!r}")
    return label_text(obs_column(adata, key, what))


def check_inputs(
    adata: AnnData,
    condition_key: str,
    control: Any,
    stimulated: Any,
    cell_type_key: str,
    target: Any,
    min_cells: int = 1,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate the labels (the target needs ``min_cells`` control cells); returns condition and cell type of
    every cell as string arrays, and ``[control, stimulated, target]`` as text (:func:`scvae.data.label_texts`)."""
    if not isinstance(adata, AnnData):
        raise InputError(f"expected an AnnData object, got {type(adata).__name__}")
    check_int("min_cells", min_cells)
    if condition_key == cell_type_key:
        raise InputError(f"condition_key and cell_type_key must be different columns, both are {condition_key!r}")
    control, stimulated, target = label_texts([control, stimulated, target])
    cond = _labels(adata, condition_key, "condition_key").to_numpy()
    types = _labels(adata, cell_type_key, "cell_type_key").to_numpy()
    present = sorted(set(cond))
    for name, value in (("control", control), ("stimulated", stimulated)):
        if value not in present:
            raise InputError(
                f"{name}={value!r} is not a category of adata.obs[{condition_key!r}] (present: {present[:10]})"
            )
    if control == stimulated:
        raise InputError(f"control and stimulated must be different categories, both are {control!r}")
    if target not in set(types):
        raise InputError(
            f"target={target!r} is not a cell type in adata.obs[{cell_type_key!r}] (present: {sorted(set(types))[:12]})"
        )
    n_source = int(((types == target) & (cond == control)).sum())
    if n_source == 0:
        raise InputError(
            f"the target cell type {target!r} has no {control!r} cells in adata; its control cells are what is "
            "decoded into the prediction"
        )
    if n_source < min_cells:
        raise InputError(
            f"the target cell type {target!r} has only {n_source} {control!r} cells, fewer than min_cells="
            f"{min_cells}; a prediction from so few cells mostly reflects which cells they are. Add control cells "
            f"of {target!r}, or pass min_cells={n_source} to predict from these"
        )
    return cond, types, [control, stimulated, target]


# -- balanced sampling ------------------------------------------------------------------------------------------
def type_groups(
    cond: np.ndarray,
    types: np.ndarray,
    *,
    control: str,
    stimulated: str,
    exclude: Sequence[str] = (),
    min_cells: int = 10,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The control and stimulated indices of every cell type the response is learnt from: {type: (control,
    stimulated)}, for the types not in ``exclude`` with at least ``min_cells`` cells in both conditions."""
    check_int("min_cells", min_cells)
    excluded = {str(t) for t in exclude}
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped = []
    for t in sorted(set(types) - excluded):
        ctrl = np.flatnonzero((types == t) & (cond == control))
        stim = np.flatnonzero((types == t) & (cond == stimulated))
        if min(len(ctrl), len(stim)) >= min_cells:
            groups[t] = (ctrl, stim)
        else:
            skipped.append(f"{t} ({len(ctrl)} {control}, {len(stim)} {stimulated})")
    if skipped:
        logger.info("cell types left out (fewer than %d cells in a condition): %s", min_cells, ", ".join(skipped))
    if not groups:
        raise InputError(
            f"no cell type other than {sorted(excluded)} has at least {min_cells} cells in both {control!r} and "
            f"{stimulated!r} (left out: {skipped}); the stimulus response is learnt from such cell types. "
            "Lower min_cells or add data"
        )
    return groups


def balanced_indices(
    cond: np.ndarray,
    types: np.ndarray,
    *,
    control: str,
    stimulated: str,
    exclude: Sequence[str] = (),
    n_per_type: int | None = None,
    min_cells: int = 10,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Indices of an equal number of cells per cell type and condition (seeded).

    The cell types are those of :func:`type_groups`. ``n_per_type`` cells are drawn per type and condition: by
    default the smallest group's size (without replacement); a larger ``n_per_type`` draws groups that are smaller
    with replacement.

    Parameters
    ----------
    cond, types
        Condition and cell type of every cell (string arrays, as :func:`check_inputs` returns them).
    control, stimulated
        The control and stimulated categories of ``cond``.
    exclude
        Cell types not drawn from (e.g. the target).
    n_per_type
        Cells drawn per type and condition, an integer >= 1; default (None): the smallest group's size.
    min_cells
        The fewest cells a type needs in each condition to be used.
    seed
        Seeds the draw.

    Returns
    -------
    The control and the stimulated indices, each a dict {cell type: sorted indices}, and the number per group.
    """
    seed = check_seed(seed)
    check_int("n_per_type", n_per_type, optional=True)
    groups = type_groups(cond, types, control=control, stimulated=stimulated, exclude=exclude, min_cells=min_cells)
    smallest = min(min(len(c), len(s)) for c, s in groups.values())
    n = int(n_per_type) if n_per_type is not None else smallest
    rng = np.random.default_rng(seed)
    out_ctrl, out_stim = {}, {}
    for t, (ctrl, stim) in groups.items():
        out_ctrl[t] = np.sort(rng.choice(ctrl, n, replace=n > len(ctrl)))
        out_stim[t] = np.sort(rng.choice(stim, n, replace=n > len(stim)))
    return out_ctrl, out_stim, n


def expression_values(block: np.ndarray, *, counts: bool, target_sum: float = 1e4) -> np.ndarray:
    """Cells × genes (dense) on the scale predictions are scored on: ``log1p(x / total × target_sum)`` for counts
    (the totals over the block's columns, as :func:`scvae.tl.evaluate_perturbation` normalises), ``x`` itself
    otherwise. Float64."""
    block = np.asarray(block, dtype=np.float64)
    if not counts:
        return block
    sums = block.sum(1, keepdims=True)
    out = block * (target_sum / np.where(sums > 0, sums, 1.0))
    return np.log1p(out, out=out)  # in place: one new array


def expression_moments(x: Any, rows: np.ndarray, *, counts: bool, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (``ddof=1``; 0 for one row) over ``rows`` of the matrix ``x`` of each gene's
    :func:`expression_values`. Read in chunks of ``chunk`` rows."""
    total = np.zeros(x.shape[1], dtype=np.float64)
    squares = np.zeros(x.shape[1], dtype=np.float64)
    for start in range(0, len(rows), chunk):
        block = expression_values(to_dense_float(x, rows[start : start + chunk]), counts=counts)
        total += block.sum(0)
        squares += np.square(block).sum(0)
    n = len(rows)
    mean = total / max(n, 1)
    var = np.maximum(squares - n * np.square(mean), 0.0) / (n - 1) if n > 1 else np.zeros_like(mean)
    return mean, var


def move_to_mean(values: np.ndarray, mean: np.ndarray, *, counts: bool) -> np.ndarray:
    """Cells × genes (``values``, on the scale of :func:`expression_values`) moved so that each gene's mean over the
    cells is ``mean``. For counts (log-normalised values, all >= 0) a gene whose mean falls has its values scaled
    down, so that they stay >= 0 (a target mean below 0 is taken as 0), and one whose mean rises has the same
    amount added to every cell; otherwise the difference is added. The cells keep their order on each gene."""
    current = values.mean(0)
    if not counts:
        return values + (mean - current)
    target = np.maximum(mean, 0.0)
    falls = target < current
    scale = np.where(falls, target / np.where(current > 0, current, 1.0), 1.0)  # per gene: one new array, not three
    moved = values * scale
    moved += np.where(falls, 0.0, target - current)
    return moved


def observed_cells(
    x: Any,
    rows: np.ndarray,
    mean: np.ndarray,
    *,
    counts: bool,
    draws: np.ndarray,
    after: np.ndarray,
    before: np.ndarray,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` of ``x`` as measured, each cell changed as the model changes it, then each gene moved to ``mean``
    (:func:`move_to_mean`); for ``predict_perturbation(..., cells="observed")``. Returns the cells (counts for
    count likelihoods) and their values on the scale of :func:`expression_values`.

    ``after`` and ``before`` (cells × genes) are the decoder's expected frequencies (or means) of each cell with
    and without the predicted shift, ``draws`` counts drawn at ``after``. For counts, where a cell's gene falls
    (ratio r = after / before < 1) its measured count is thinned binomially with probability r; where it rises,
    the draw thinned with probability 1 − 1 / r is added (a thinned negative binomial is a negative binomial of
    the same dispersion, so the extra counts have mean after − before and the model's shape). A gene induced from
    zero thus looks like the model's draws, and one that does not change keeps the measured cells. Otherwise
    after − before is added to the measured values. Thinning is seeded with ``seed``. The cells are float32."""
    real = to_dense_float(x, rows)
    if not counts:
        cells = real.astype(np.float64) + (after - before)
        return cells.astype(np.float32), move_to_mean(cells, mean, counts=False)
    # Binomials only where a count is drawn from: numpy draws nothing for n = 0 or p = 0, so this gives the same
    # cells, seed for seed, as drawing over every entry, in time and memory in proportion to the non-zero counts.
    rng = np.random.default_rng(seed)
    cells = np.zeros(real.shape, dtype=np.float32)  # float32 as the model's draws, exact for counts below 2**24
    have = real > 0
    cells[have] = rng.binomial(np.rint(real[have]).astype(np.int64), np.minimum(_ratio(after, before, have), 1.0))
    rise = (draws > 0) & (after > before)
    more = 1.0 - 1.0 / _ratio(after, before, rise)
    cells[rise] += rng.binomial(np.rint(draws[rise]).astype(np.int64), more)
    return cells, move_to_mean(expression_values(cells, counts=True), mean, counts=True)


def _ratio(after: np.ndarray, before: np.ndarray, where: np.ndarray) -> np.ndarray:
    """after / before at the entries ``where`` (float64): inf where a gene rises from an expected 0, 1 where both
    are 0."""
    a, b = after[where].astype(np.float64), before[where].astype(np.float64)
    return np.divide(a, b, out=np.where(a > 0, np.inf, 1.0), where=b > 0)


def interval_scale(changes: np.ndarray) -> np.ndarray:
    """Per-gene scale of the intervals from the real changes of several cell types (types × genes): the
    standard deviation of each gene's change across the types, plus the median of those over genes (a floor,
    so that genes that never respond still get an interval of sensible width)."""
    sd = changes.std(0, ddof=1)
    return sd + np.median(sd)


def predicted_obs(
    adata: AnnData,
    source: np.ndarray,
    *,
    condition_key: str,
    stimulated: str,
    suffix: str,
    numbered: bool = False,
    cell_type: tuple[str, str] | None = None,
) -> pd.DataFrame:
    """``obs`` of cells predicted from the cells ``source`` of ``adata``: their columns, with ``condition_key`` set
    to ``stimulated`` (and ``cell_type``, a (key, type) pair, if given), ``predicted=True``, ``source_cell``, and
    names ``<source cell><suffix>``, followed by the position if ``numbered`` (a cell may be a source twice)."""
    obs = adata.obs.iloc[source].copy()
    obs["source_cell"] = obs.index.astype(str)
    obs.index = pd.Index([f"{name}{suffix}{i if numbered else ''}" for i, name in enumerate(obs.index.astype(str))])
    for key, value in [(condition_key, stimulated), *([cell_type] if cell_type else [])]:
        obs[key] = pd.Categorical([value] * len(obs), categories=category_order(adata.obs[key]))
    obs["predicted"] = True
    return obs


# -- optimal transport ---------------------------------------------------------------------------------------
def transport_pairs(
    z_ctrl: np.ndarray, z_stim: np.ndarray, *, max_cells: int = 500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pair control and stimulated latent codes of one cell type by optimal transport; returns the paired rows of
    ``z_ctrl`` and of ``z_stim`` (two index arrays of equal length).

    Both sets are subsampled (seeded) to the same size, the smaller of the two and ``max_cells``, and matched one
    to one by the exact assignment that minimises the total squared Euclidean distance (optimal transport
    between two uniform empirical measures of equal size, whose optimal plan is a permutation)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    m = min(len(z_ctrl), len(z_stim), int(max_cells))
    ctrl = np.sort(rng.choice(len(z_ctrl), m, replace=False))
    stim = np.sort(rng.choice(len(z_stim), m, replace=False))
    rows, cols = linear_sum_assignment(
        cdist(z_ctrl[ctrl].astype(np.float64), z_stim[stim].astype(np.float64), "sqeuclidean")
    )
    return ctrl[rows], stim[cols]


def transport_displacements(
    z_ctrl: np.ndarray, z_stim: np.ndarray, *, max_cells: int = 500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The control codes paired by :func:`transport_pairs` and their displacements (z_stim[paired] − z_ctrl), as
    float64."""
    ctrl, stim = transport_pairs(z_ctrl, z_stim, max_cells=max_cells, seed=seed)
    a = z_ctrl[ctrl].astype(np.float64)
    return a, z_stim[stim].astype(np.float64) - a


def neighbour_shift(anchors: np.ndarray, moves: np.ndarray, z: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, int]:
    """The mean displacement ``moves`` of the ``n_neighbors`` (at most all) nearest ``anchors`` of each row of
    ``z`` (Euclidean), and the number of neighbours used."""
    from sklearn.neighbors import NearestNeighbors

    k = min(int(n_neighbors), len(anchors))
    _, idx = NearestNeighbors(n_neighbors=k).fit(anchors).kneighbors(z.astype(np.float64))
    return moves[idx].mean(1), k
