"""Predicting how a cell type responds to a stimulus it was never seen under (the scGen task).

Two ways to predict, both decoding the target cell type's control cells into "stimulated" cells:

- ``method="delta"`` (scGen's latent arithmetic): δ = mean z(stimulated) − mean z(control) over the *other*
  cell types, each balanced to the same number of cells per type and condition; the target's control cells are
  moved by δ in latent space and decoded.
- ``method="counterfactual"``: for a cVAE conditioned on the condition, the target's control cells are encoded
  with their own (control) label and decoded with the stimulated label.
- ``method="transport"``: a response that depends on the cell's state. On each other cell type, control and
  stimulated latent codes are paired by optimal transport (as CellOT and scPRAM do), which gives every paired
  control cell its own displacement; each target control cell then moves by the mean displacement of its
  nearest such control cells, so cells that sit near monocytes respond like monocytes, and so on.

:func:`linear_shift` is the gene-space baseline: the same balanced difference of means, taken on log-normalised
expression and added to the target's control cells. Evaluate predictions with :mod:`scvae.tl`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .conditions import (
    UNS_KEY,
    balanced_indices,
    categories,
    check_inputs,
    linear_shift,
    mean_expression,
    transport_displacements,
    type_groups,
)
from .data import InputError, check_choice, check_int, check_number, check_positive_int
from .latent import decode, model_matrix, posterior_means, transported_shift

if TYPE_CHECKING:  # pragma: no cover
    from .model import SCVAE

logger = logging.getLogger(__name__)

METHODS = ("delta", "counterfactual", "transport")
# linear_shift, balanced_indices and type_groups live in scvae.conditions and are importable from here too
__all__ = [
    "METHODS",
    "balanced_indices",
    "change_intervals",
    "interval_scale",
    "linear_shift",
    "predict_perturbation",
    "transport_displacements",
    "type_groups",
]


def predict_perturbation(
    model: SCVAE,
    adata: AnnData,
    *,
    condition_key: str,
    control: str,
    stimulated: str,
    cell_type_key: str,
    target: str,
    method: str = "delta",
    n_cells: int | None = None,
    n_per_type: int | None = None,
    min_cells: int = 10,
    n_neighbors: int = 30,
    interval: float | None = None,
    interval_genes: int = 100,
    seed: int = 0,
    batch_size: int = 1024,
) -> AnnData:
    """Predict the ``stimulated`` cells of cell type ``target`` from its ``control`` cells.

    Parameters
    ----------
    model
        A trained :class:`~scvae.model.SCVAE`. For ``method="counterfactual"`` it must be conditioned on
        ``condition_key`` (``scvae.model.fit(..., condition_key=...)``).
    adata
        Cells with the model's genes (any order; extra genes are ignored), holding the target's control cells
        and, for ``"delta"``, other cell types in both conditions. Stimulated cells of the target, if any, are
        not used. Not modified.
    condition_key, control, stimulated
        The ``obs`` column of the condition and its control and stimulated categories.
    cell_type_key, target
        The ``obs`` column of cell types and the cell type to predict.
    method
        ``"delta"``: z_pred = z(target control) + δ, with δ = mean z(stimulated) − mean z(control) over the
        other cell types, balanced (``n_per_type`` cells per type and condition, drawn with ``seed``; z is the
        posterior mean). If the model is itself conditioned on ``condition_key``, the prediction is decoded with
        the stimulated label. ``"counterfactual"``: the target's control cells are encoded with their control
        label and decoded with the stimulated one (posterior mean of z). ``"transport"``: on each other cell
        type with at least ``min_cells`` cells per condition, control and stimulated codes (posterior means,
        at most 500 per condition, drawn with ``seed``) are paired by optimal transport
        (:func:`transport_displacements`); each target control cell moves by the mean displacement of its
        ``n_neighbors`` nearest paired control cells, and is decoded (with the stimulated label if the model
        is conditioned on ``condition_key``). Which to use: ``"delta"`` on a VAE trained with fit's defaults.
        On Kang (IFN-β, 7 held-out cell types, 2,000 HVGs, seeds 0–2, ``benchmarks/results/perturbation_kang.md``)
        ``"delta"`` and ``"transport"`` tie for the best mean Pearson-delta over the top-100 changed genes
        (0.933, against 0.878 for :func:`linear_shift` and 0.974 for two halves of the real cells);
        ``"transport"`` on a cVAE is closest to the real cells on the E-distance (mean 38 against 53 for
        ``"delta"`` and 74 for the linear shift), but the linear shift is closer for the T and B cells.
    n_cells
        Number of predicted cells: default one per control cell of the target. Otherwise each control cell is
        decoded ``n_cells // n_control`` times (each time a new draw of counts) and the remaining cells are
        drawn without replacement (with ``seed``). More cells than control cells lower the sampling noise of
        the predicted means.
    n_per_type, min_cells
        Balancing for ``"delta"`` (see :func:`balanced_indices`): cells per type and condition (default: the
        smallest such group) and the fewest cells a type needs in each condition to be used (also for
        ``"transport"``).
    n_neighbors
        ``"transport"``: paired control cells whose displacements are averaged for each target cell.
    interval
        A level in (0, 1), e.g. ``0.9``: also return an interval for the predicted mean change of every gene
        (``var["change_lower"]``, ``var["change_upper"]``), calibrated by predicting each other cell type from
        the rest (see :func:`change_intervals`). It needs at least three other cell types with ``min_cells``
        cells in both conditions, and costs one more prediction per such type. On Kang (as above, ``"delta"``)
        a 90 % interval covers 87–94 % of the top-100 changed genes' real change on five of the seven types, 80 %
        and 78 % on the two smallest (NK, DC).
    interval_genes
        The intervals are calibrated on each other type's ``interval_genes`` genes of largest real change.
    seed
        Seeds the balanced draw, the choice of control cells and the sampling of counts.
    batch_size
        Cells per forward pass.

    Returns
    -------
    A new AnnData of predicted cells × the model's genes. ``X``: counts drawn from the model's likelihood, with
    each source control cell's library size (so they can be normalised like real data; for non-count
    likelihoods, draws on the model's scale). ``layers["expected_frequency"]``: the decoder's expected
    frequencies (rows sum to 1) for count likelihoods, or ``layers["expected"]``: the likelihood's mean
    otherwise. ``obs``: the source cells' columns with ``condition_key`` set to ``stimulated``,
    ``predicted=True`` and ``source_cell``. ``var["change"]``: the predicted mean change of each gene from the
    target's control cells (log-normalised expression for count likelihoods, see :func:`mean_expression`).
    With ``interval``: ``var["change_lower"]`` and ``var["change_upper"]``. ``uns["scvae_perturbation"]``:
    method, δ (for ``"delta"``), labels, the cell types and cell counts used, and the calibration.

    Examples
    --------
    >>> model = scvae.model.fit(train, n_latent=10)
    >>> pred = model.predict_perturbation(train, condition_key="condition", control="control",
    ...                                   stimulated="stimulated", cell_type_key="cell_type", target="CD4 T")
    """
    check_choice("method", method, METHODS)
    check_positive_int("n_neighbors", n_neighbors)
    check_positive_int("interval_genes", interval_genes)
    if interval is not None:
        check_number("interval (a level, e.g. 0.9, or None)", interval, low=0.0, high=1.0, strict=True)
    check_int("n_cells", n_cells, optional=True)
    control, stimulated, target = str(control), str(stimulated), str(target)
    cond, types = check_inputs(
        adata,
        condition_key=condition_key,
        control=control,
        stimulated=stimulated,
        cell_type_key=cell_type_key,
        target=target,
        min_cells=min_cells,
    )
    model_cond_key = model.spec.condition_key
    conditioned = condition_key in model.labels.keys
    if method == "counterfactual" and not conditioned:
        raise InputError(
            f"method='counterfactual' needs a model conditioned on {condition_key!r} (the model's labels: "
            f"{model.labels.keys or 'none'}); train one with scvae.model.fit(..., condition_key={condition_key!r}) "
            "or use method='delta'"
        )
    if conditioned:
        known = model.labels.categories[condition_key]
        for name, value in (("control", control), ("stimulated", stimulated)):
            if value not in known:
                raise InputError(f"{name}={value!r} is not a category the model knows for {condition_key!r}: {known}")
    if conditioned and model_cond_key != condition_key:
        logger.info(
            "the model is conditioned on %r as a %s label",
            condition_key,
            "batch" if model.spec.batch_key == condition_key else "covariate",
        )

    x = model_matrix(model, adata)
    codes = model.labels.encode(adata)
    rng = np.random.default_rng(seed)
    source = np.flatnonzero((types == target) & (cond == control))
    if n_cells is not None:  # every control cell used equally often, the remainder drawn without replacement
        reps, rest = divmod(int(n_cells), len(source))
        source = np.concatenate([np.repeat(source, reps), np.sort(rng.choice(source, rest, replace=False))])

    record: dict[str, Any] = {
        "method": method,
        "condition_key": condition_key,
        "control": control,
        "stimulated": stimulated,
        "cell_type_key": cell_type_key,
        "target": target,
        "n_control_cells": int(len(np.unique(source))),
        "n_predicted": int(len(source)),
        "likelihood": model.likelihood,
        "seed": int(seed),
    }
    z = posterior_means(model, x, codes, source, batch_size)
    if method == "delta":
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
        z_ctrl = posterior_means(model, x, codes, np.concatenate(list(ctrl_idx.values())), batch_size)
        z_stim = posterior_means(model, x, codes, np.concatenate(list(stim_idx.values())), batch_size)
        delta = z_stim.mean(0) - z_ctrl.mean(0)
        z = z + delta[None, :]
        record.update(
            delta=[float(v) for v in delta],
            delta_norm=float(np.linalg.norm(delta)),
            cell_types=list(ctrl_idx),
            n_per_type=int(n),
        )
        logger.info(
            "δ from %d cell types × %d cells per condition (|δ| = %.3f)", len(ctrl_idx), n, record["delta_norm"]
        )
    elif method == "transport":
        z = z + transported_shift(
            model,
            x,
            codes,
            cond,
            types,
            z,
            control=control,
            stimulated=stimulated,
            target=target,
            min_cells=min_cells,
            n_neighbors=n_neighbors,
            seed=seed,
            batch_size=batch_size,
            record=record,
        )
    else:
        record["cell_types"] = [target]

    decode_codes = codes[source].copy()
    if conditioned:
        j = model.labels.keys.index(condition_key)
        decode_codes[:, j] = model.labels.categories[condition_key].index(stimulated)
    library = None
    if model.module.counts:
        library = np.asarray(x[source].sum(axis=1), dtype=np.float64).ravel()
    counts, expected = decode(model, z, decode_codes, library, batch_size, seed)
    record["decoded_with_stimulated_label"] = bool(conditioned)

    obs = adata.obs.iloc[source].copy()
    obs["source_cell"] = obs.index.astype(str)
    obs.index = pd.Index([f"{name}-pred{i}" for i, name in enumerate(obs.index.astype(str))])
    obs[condition_key] = pd.Categorical([stimulated] * len(obs), categories=categories(adata, condition_key))
    obs[cell_type_key] = pd.Categorical([target] * len(obs), categories=categories(adata, cell_type_key))
    obs["predicted"] = True
    var = adata.var.loc[model.genes].copy()
    layer = "expected_frequency" if model.module.counts else "expected"
    out = AnnData(
        X=sp.csr_matrix(counts) if model.module.counts else counts,
        obs=obs,
        var=var,
        layers={layer: expected},
        uns={UNS_KEY: record},
    )
    counts = model.module.counts
    control_mean = mean_expression(x, np.flatnonzero((types == target) & (cond == control)), counts=counts)
    out.var["change"] = mean_expression(out.X, np.arange(out.n_obs), counts=counts) - control_mean
    if interval is not None:
        predict_kw = dict(method=method, n_cells=n_cells, n_per_type=n_per_type, n_neighbors=n_neighbors)
        half, calibration = change_intervals(
            model,
            adata,
            condition_key=condition_key,
            control=control,
            stimulated=stimulated,
            cell_type_key=cell_type_key,
            target=target,
            level=float(interval),
            n_genes=interval_genes,
            min_cells=min_cells,
            seed=seed,
            batch_size=batch_size,
            **predict_kw,
        )
        out.var["change_lower"] = out.var["change"] - half
        out.var["change_upper"] = out.var["change"] + half
        record["interval"] = calibration
    return out


def interval_scale(changes: np.ndarray) -> np.ndarray:
    """Per-gene scale of the intervals from the real changes of several cell types (types × genes): the
    standard deviation of each gene's change across the types, plus the median of those over genes (a floor,
    so that genes that never respond still get an interval of sensible width)."""
    sd = changes.std(0, ddof=1)
    return sd + np.median(sd)


def change_intervals(
    model: SCVAE,
    adata: AnnData,
    *,
    condition_key: str,
    control: str,
    stimulated: str,
    cell_type_key: str,
    target: str,
    level: float = 0.9,
    n_genes: int = 100,
    min_cells: int = 10,
    seed: int = 0,
    batch_size: int = 1024,
    **predict_kw: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Half-widths of the intervals for the predicted mean change of every gene of ``target`` (the model's
    genes), calibrated on the other cell types: a split-conformal interval with cell types as the units.

    Each other cell type ``t`` with at least ``min_cells`` cells in both conditions is predicted in turn, as
    ``predict_perturbation`` (same ``predict_kw``) would, from the cells of the types other than ``t`` and
    ``target``. Its errors, real minus predicted change of each gene, are divided by the gene's scale
    :func:`interval_scale` (from the real changes of the types other than ``t`` and ``target``), and ``q_t``
    is the ``level`` quantile of those scaled errors over ``t``'s ``n_genes`` genes of largest real change.
    The half-width for the target is ``max_t q_t`` × the scale from all the other types' changes. If the cell
    types were exchangeable, the target's own ``q`` would exceed the largest of ``K`` others with probability
    1 / (K + 1), so with ``K`` = 6 types the target's top genes are covered at ``level`` or more with
    probability about 0.86. Two caveats: the model has seen the other types' stimulated cells in training,
    which makes their errors smaller than a truly unseen type's; and a target with few cells has a noisier real
    change than large calibration types (``benchmarks/results/perturbation_kang.md`` reports the coverage).

    Returns
    -------
    The half-widths (one per gene of the model) and a record: the level, the per-type quantiles ``q_t``, the
    chosen quantile and the number of genes.
    """
    control, stimulated, target = str(control), str(stimulated), str(target)
    cond, types = check_inputs(
        adata,
        condition_key=condition_key,
        control=control,
        stimulated=stimulated,
        cell_type_key=cell_type_key,
        target=target,
        min_cells=min_cells,
    )
    check_positive_int("n_genes", n_genes)
    groups = type_groups(cond, types, control=control, stimulated=stimulated, exclude=[target], min_cells=min_cells)
    if len(groups) < 3:
        raise InputError(
            f"intervals are calibrated by predicting each other cell type from the rest, which needs at least 3 "
            f"cell types besides {target!r} with {min_cells} or more cells in both {control!r} and {stimulated!r} "
            f"(found {len(groups)}: {list(groups)}); use interval=None or lower min_cells"
        )
    x = model_matrix(model, adata)
    counts = model.module.counts
    controls = {t: mean_expression(x, c, counts=counts) for t, (c, _) in groups.items()}
    real = np.stack([mean_expression(x, s, counts=counts) - controls[t] for t, (_, s) in groups.items()])
    rest = adata[types != target]
    quantiles = {}
    for i, t in enumerate(groups):
        pred = predict_perturbation(
            model,
            rest,
            condition_key=condition_key,
            control=control,
            stimulated=stimulated,
            cell_type_key=cell_type_key,
            target=t,
            min_cells=min_cells,
            seed=seed,
            batch_size=batch_size,
            **predict_kw,
        )
        scaled = np.abs(real[i] - pred.var["change"].to_numpy()) / interval_scale(np.delete(real, i, 0))
        top = np.argsort(-np.abs(real[i]), kind="stable")[: min(n_genes, real.shape[1])]
        quantiles[t] = float(np.quantile(scaled[top], level))
    q = max(quantiles.values())
    logger.info("interval calibrated on %d cell types: scaled-error quantiles %s", len(groups), quantiles)
    record = {"level": level, "quantile": q, "type_quantiles": quantiles, "n_genes": int(n_genes)}
    return q * interval_scale(real), record
