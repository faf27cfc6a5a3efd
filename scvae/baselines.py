"""Gene-space baselines for perturbation prediction, which need no model: :func:`linear_shift` moves the target's
control cells by other cell types' difference of means, pooled or weighted by how alike the types are
(:func:`similar_types_change`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from anndata import AnnData

from .conditions import (
    UNS_KEY,
    balanced_indices,
    check_inputs,
    expression_moments,
    move_to_mean,
    predicted_obs,
    type_groups,
)
from .data import InputError, check_bool, check_seed, log_normalize
from .loaders import to_dense_float

SIMILARITY_SCALES = (0.1, 0.25, 0.5, 1.0)  # the τ that similar_types_change chooses from


def similar_types_change(
    ctrl_means: np.ndarray, changes: np.ndarray, target_mean: np.ndarray, *, n_genes: int = 100
) -> tuple[np.ndarray, dict[str, Any]]:
    """The change of a target cell type predicted from other types' changes, weighted by how alike their control
    cells are; returns it and a record of the weights.

    ``ctrl_means`` and ``changes`` (types × genes): each other type's mean control expression and its change
    (stimulated − control); ``target_mean``: the target's mean control expression. Type t weighs
    w_t ∝ exp(−(d_t / d_min − 1) / τ), d_t the Euclidean distance between its control mean and the target's and
    d_min the smallest of those, so the nearest type weighs most and a type twice as far weighs e^(−1/τ) as much.
    τ is chosen from :data:`SIMILARITY_SCALES` by predicting each other type from the rest the same way: the τ with
    the highest mean Pearson correlation between predicted and real change over each type's ``n_genes`` genes of
    largest real change (the first such τ on ties). With fewer than three other types τ = 0.25."""

    def weights(means: np.ndarray, target: np.ndarray, tau: float) -> np.ndarray:
        d = np.sqrt(np.square(means - target).sum(1))
        w = np.exp(-(d / max(float(d.min()), 1e-12) - 1.0) / tau)
        return w / w.sum()

    tau, scores = 0.25, {}
    if len(changes) >= 3:
        for t in SIMILARITY_SCALES:
            r = []
            for i in range(len(changes)):
                rest = np.arange(len(changes)) != i
                top = np.argsort(-np.abs(changes[i]), kind="stable")[:n_genes]
                guess = weights(ctrl_means[rest], ctrl_means[i], t) @ changes[rest]
                varies = np.ptp(guess[top]) > 0 and np.ptp(changes[i][top]) > 0  # else no correlation: 0
                r.append(np.corrcoef(guess[top], changes[i][top])[0, 1] if varies else 0.0)
            scores[t] = float(np.mean(r))
        tau = max(scores, key=scores.get)
    w = weights(ctrl_means, target_mean, tau)
    record = {
        "similarity_scale": float(tau),
        "similarity_scores": {str(k): v for k, v in scores.items()},  # str keys, as h5ad needs
        "type_weights": [float(v) for v in w],
    }
    return w @ changes, record


def similar_types_of(
    cond: np.ndarray,
    types: np.ndarray,
    target_mean: np.ndarray,
    mean: Callable[[np.ndarray], np.ndarray],
    *,
    control: str,
    stimulated: str,
    target: str,
    min_cells: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`similar_types_change` from the cells themselves: ``mean(rows)`` gives the mean expression of some
    cells, taken over each other type's control and stimulated cells (types with ``min_cells`` in both);
    ``target_mean``: the target's control mean on the same scale. The record names the types used."""
    groups = type_groups(cond, types, control=control, stimulated=stimulated, exclude=[target], min_cells=min_cells)
    means = [(mean(ctrl), mean(stim)) for ctrl, stim in groups.values()]
    change, record = similar_types_change(
        np.stack([c for c, _ in means]), np.stack([s - c for c, s in means]), target_mean
    )
    return change, {"cell_types": list(groups), **record}


def linear_shift(
    adata: AnnData,
    *,
    condition_key: str,
    control: str,
    stimulated: str,
    cell_type_key: str,
    target: str,
    layer: str | None = None,
    n_per_type: int | None = None,
    min_cells: int = 10,
    balanced: bool = True,
    similar: bool = False,
    target_sum: float = 1e4,
    seed: int = 0,
) -> AnnData:
    """Baseline: shift the target's control cells by the difference of means in log-normalised gene space.

    δ = mean log-normalised expression of stimulated − of control cells of the other cell types, balanced as in
    :func:`predict_perturbation` (same ``n_per_type``, ``min_cells``, ``seed``; with ``balanced=False``: over
    all their cells as they are, so that large cell types weigh more), added to the target's
    log-normalised control cells (``normalize_total(target_sum)`` + ``log1p``). Values are not clipped, so the
    predicted mean of each gene is exactly the target's control mean + δ.

    Parameters
    ----------
    adata
        Cells × genes, counts in ``X`` or ``layer``, holding the target's control cells and other cell types in
        both conditions. Not modified.
    condition_key, control, stimulated
        The ``obs`` column of the condition and its control and stimulated categories.
    cell_type_key, target
        The ``obs`` column of cell types and the cell type to predict.
    layer
        Read the counts from ``adata.layers[layer]`` instead of ``adata.X``.
    n_per_type, min_cells
        Cells per type and condition of the balanced draw (see :func:`balanced_indices`; default: the smallest such
        group; must be None with ``balanced=False``), and the fewest cells a type needs in each condition to be
        used (and the target in control).
    balanced
        Take δ over a balanced draw (True) or over all cells of the types used (False).
    similar
        Weigh the cell types by how alike their control cells are to the target's (:func:`similar_types_change`):
        δ = Σ_t w_t δ_t, each type's own difference of means over all its cells, so ``balanced`` does not apply
        (``n_per_type`` must be None). A stronger baseline for types whose response resembles their neighbours':
        on Kang's HVGs (``benchmarks/results/perturbation_similar.md``, seeds 0–2) its mean Pearson-delta over the
        top-100 changed genes is 0.929 against 0.878 for the balanced shift, 0.940 for ``predict_perturbation``'s
        model alone (``similar=0``) and 0.944 for its default, which averages the two.
    target_sum
        Total each cell is scaled to before ``log1p``.
    seed
        Seeds the balanced draw.

    Returns
    -------
    A new AnnData whose ``X`` is *log-normalised* (evaluate it with ``pred_normalized=True``); obs as in
    :func:`predict_perturbation`; ``uns["scvae_perturbation"]`` records what was used (the cell types, the balanced
    draw or the similar types' weights, the seed).
    """
    seed = check_seed(seed)
    cond, types, (control, stimulated, target) = check_inputs(
        adata, condition_key, control, stimulated, cell_type_key, target, min_cells
    )
    check_bool("balanced", balanced)
    check_bool("similar", similar)
    logx = log_normalize(adata, layer=layer, target_sum=target_sum)
    source = np.flatnonzero((types == target) & (cond == control))
    record: dict[str, Any] = {"method": "linear_shift", "balanced": bool(balanced) and not similar}
    if similar:
        if n_per_type is not None:
            raise InputError("n_per_type sets the cells per type of the balanced difference; with similar=True drop it")

        def mean_of(rows: np.ndarray) -> np.ndarray:
            return np.asarray(logx[rows].mean(0), dtype=np.float64).ravel()

        delta, chosen = similar_types_of(
            cond,
            types,
            mean_of(source),
            mean_of,
            control=control,
            stimulated=stimulated,
            target=target,
            min_cells=min_cells,
        )
        record.update(similar=True, **chosen)
    else:
        if balanced:
            ctrl_idx, stim_idx, n = balanced_indices(
                cond,
                types,
                control=control,
                stimulated=stimulated,
                exclude=[target],
                n_per_type=n_per_type,
                min_cells=min_cells,
                seed=seed,
            )
        else:  # every cell of the same cell types, as they are
            if n_per_type is not None:
                raise InputError(
                    "n_per_type sets the cells per type of the balanced difference; with balanced=False drop it"
                )
            groups = type_groups(
                cond, types, control=control, stimulated=stimulated, exclude=[target], min_cells=min_cells
            )
            ctrl_idx = {t: c for t, (c, _) in groups.items()}
            stim_idx = {t: st for t, (_, st) in groups.items()}
        delta = np.asarray(
            logx[np.concatenate(list(stim_idx.values()))].mean(0)
            - logx[np.concatenate(list(ctrl_idx.values()))].mean(0)
        ).ravel()
        record.update(cell_types=list(ctrl_idx), n_per_type=int(n) if balanced else None)
    pred = to_dense_float(logx, source) + delta[None, :]  # logx is float32 already
    obs = predicted_obs(adata, source, condition_key=condition_key, stimulated=stimulated, suffix="-shift")
    record.update(log_normalized=True, target_sum=float(target_sum), n_control_cells=int(len(source)), seed=int(seed))
    return AnnData(X=pred.astype(np.float32), obs=obs, var=adata.var.copy(), uns={UNS_KEY: record})


def toward_similar_types(
    values: np.ndarray,
    control_mean: np.ndarray,
    x: Any,
    cond: np.ndarray,
    types: np.ndarray,
    *,
    control: str,
    stimulated: str,
    target: str,
    weight: float,
    counts: bool,
    min_cells: int = 10,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Predicted cells (``values``, on the scale of :func:`~scvae.conditions.expression_values`) moved so that
    their mean change from the target's control mean (``control_mean``, of rows of ``x``) is ``1 − weight`` of
    theirs plus ``weight`` of :func:`similar_types_change`'s, from the other types with ``min_cells`` cells per
    condition (for ``predict_perturbation(..., similar=...)``); returns them and a record of the weighting."""
    change, record = similar_types_of(
        cond,
        types,
        control_mean,
        lambda rows: expression_moments(x, rows, counts=counts)[0],
        control=control,
        stimulated=stimulated,
        target=target,
        min_cells=min_cells,
    )
    mean = (1.0 - weight) * values.mean(0) + weight * (control_mean + change)
    return move_to_mean(values, mean, counts=counts), {"weight": float(weight), **record}
