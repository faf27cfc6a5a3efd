"""Predicting how a cell type responds to a stimulus it was never seen under (the scGen task).

Three ways to predict, each decoding the target cell type's control cells into "stimulated" cells:

- ``method="delta"`` (scGen's latent arithmetic): δ = mean z(stimulated) − mean z(control) over the *other*
  cell types, each balanced to the same number of cells per type and condition; the target's control cells are
  moved by δ in latent space and decoded.
- ``method="counterfactual"``: for a cVAE conditioned on the condition, the target's control cells are encoded
  with their own (control) label and decoded with the stimulated label.
- ``method="transport"`` (the default): a response that depends on the cell's state. On each other cell type,
  control and stimulated latent codes are paired by optimal transport (as CellOT and scPRAM do), which gives every
  paired control cell its own displacement; each target control cell then moves by the mean displacement of its
  nearest such control cells, so cells that sit near monocytes respond like monocytes, and so on.

:func:`linear_shift` is the gene-space baseline: the same balanced difference of means, taken on log-normalised
expression and added to the target's control cells. Evaluate predictions with :mod:`scvae.tl`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.stats import norm

from .baselines import linear_shift, toward_similar_types
from .conditions import (
    EXPRESSION_LAYER,
    UNS_KEY,
    balanced_indices,
    check_inputs,
    expression_moments,
    expression_values,
    interval_scale,
    observed_cells,
    predicted_obs,
    transport_displacements,
    type_groups,
)
from .data import InputError, check_bool, check_choice, check_int, check_number, check_seed
from .latent import (
    balanced_delta,
    decode,
    decoder_bias,
    model_conditions_on,
    posterior_means,
    subtract_bias,
    transported_shift,
)

if TYPE_CHECKING:  # pragma: no cover
    from .model import SCVAE

logger = logging.getLogger(__name__)

METHODS = ("delta", "counterfactual", "transport")
MIN_PREDICTED_CELLS = 1000  # the fewest cells predict_perturbation predicts by default (n_cells=None)
# linear_shift (scvae.baselines), balanced_indices and type_groups (scvae.conditions) are importable from here too
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
    method: str = "transport",
    n_cells: int | None = None,
    n_per_type: int | None = None,
    min_cells: int = 10,
    n_neighbors: int = 30,
    interval: float | None = None,
    interval_genes: int = 100,
    correct_bias: bool = True,
    similar: float = 0.5,
    cells: str = "observed",
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
        and, for ``"delta"`` and ``"transport"``, other cell types in both conditions. Stimulated cells of the
        target, if any, are not used. Not modified.
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
        is conditioned on ``condition_key``). Which to use: ``"transport"`` (the default) on a VAE trained with
        fit's defaults, with ``similar=0.5``: on Kang (IFN-β, 7 held-out types, seeds 0–2) a mean Pearson-delta
        over the top-100 changed genes of 0.944 on 2,000 HVGs and 0.946 on all genes
        (``benchmarks/results/perturbation_kang_similar.md``, ``perturbation_kang_all_genes_similar.md``); the
        model's change alone 0.941 and 0.945, ``"delta"`` 0.938 and 0.937 (``perturbation_kang.md``,
        ``perturbation_kang_all_genes.md``), :func:`linear_shift` 0.878 and 0.887, two halves of the real cells
        0.974 and 0.976. Run by run (``benchmarks/results/perturbation_paired.md``) ``"transport"`` is ahead of
        ``"delta"`` in 16 of 21 runs on the HVGs and 19 of 21 on all genes, and closer on the E-distance (mean 47
        against 55 on the HVGs). A cVAE with the same call trades R² over scGen's list for a lower E-distance (README).
    n_cells
        Number of predicted cells (default: one per control cell, at least :data:`MIN_PREDICTED_CELLS`), each control
        cell used equally often (new draws each time), the rest drawn without replacement (``seed``). The means
        average the draws: one cell per control cell gives 0.941, not 0.944, on Kang's HVGs (same models; the
        ``default`` rows of ``benchmarks/results/perturbation_stretch.csv``) and intervals covering 95 %, not 91 %.
    n_per_type, min_cells
        Balancing for ``"delta"`` (see :func:`balanced_indices`): cells per type and condition (default: the
        smallest such group) and the fewest cells a type needs in each condition to be used (also for
        ``"transport"``).
    n_neighbors
        ``"transport"``: paired control cells whose displacements are averaged for each target cell.
    interval
        A level in (0, 1), e.g. ``0.9``: also return an interval for the predicted mean change of every gene
        (``var["change_lower"]``, ``var["change_upper"]``), calibrated by predicting each other cell type from
        the rest by the model alone (``similar=0``) and widened by the sampling error of the observed change (see
        :func:`change_intervals`). It needs at least three other cell types with ``min_cells`` cells in both
        conditions, and costs one more prediction per such type. On Kang's HVGs (defaults, seeds 0–2;
        ``benchmarks/results/perturbation_kang_similar.md``) a 90 % interval covers 91 % of the top-100 changed
        genes' real change, 87–93 % on each of 7 types; on all genes 93 %, CD4 T 99 %. Calibrated on the mixed
        predictions (one cell per control cell; ``perturbation_interval_mix.md``) they are wider: 97 %, not 95 %.
    interval_genes
        The intervals are calibrated on each other type's ``interval_genes`` genes of largest real change.
    correct_bias
        Remove the decoder's own error from the prediction (``layers["expression"]`` and ``var["change"]``):
        the same source cells are also decoded *without* the shift (at their own z and labels); each gene's
        bias b, its mean over those reconstructions minus its mean over the real control cells (log-normalised
        for count likelihoods), shrunk by b² / (b² + v), v the variance of the control cells' mean (so a gene
        whose apparent bias is within the sampling noise of a few control cells is left nearly as predicted),
        is taken off the predicted cells' mean (:func:`~scvae.conditions.move_to_mean`). The predicted change is
        then, where the bias is clear, the model's change between the shifted and the unshifted decoding of the
        same cells, so a gene the decoder reconstructs too high or too low in the target's control cells is not
        reported as changed. On Kang (as above) this raises the mean Pearson-delta over the top-100 changed genes
        of ``"delta"`` from 0.932 to 0.938 (the same models and draws without and with it), most on the small
        types (NK 0.900 → 0.923); the smallest, DC (30 control cells), loses 0.006. ``X`` is not affected.
    similar
        A weight in [0, 1]: the predicted mean change is ``1 − similar`` of the model's plus ``similar`` of the
        change observed in the other cell types, weighted by how alike their control cells are to the target's
        (:func:`~scvae.baselines.similar_types_change`; ``linear_shift(..., similar=True)`` alone); 0: the model's
        alone. With the default 0.5, ``"transport"``'s mean Pearson-delta over the top-100 changed genes goes from
        0.940 to 0.944 on Kang's HVGs (``benchmarks/results/perturbation_similar.md``), 0.945 to 0.946 on all its
        genes (``perturbation_kang_all_genes_similar.md``) and 0.828 to 0.850 on the lineage case
        (``perturbation_lineage_similar.md``), and over all genes from 0.891 to 0.903, 0.855 to 0.875 and 0.654 to
        0.723 (seeds 0–2, 7 cell types each); DC, far from every other type, loses in each.
    cells
        Which cells carry the predicted means (the same either way, and so ``var["change"]`` and every mean-based
        score). ``"observed"`` (the default): the source control cells as measured, each changed count by count as
        the model changes it (thinned where the decoder lowers a gene, given thinned draws where it raises one;
        :func:`~scvae.conditions.observed_cells`), then each gene moved to the predicted mean. ``"decoded"``: the
        model's draws. On Kang's HVGs (``"transport"``, ``benchmarks/results/perturbation_observed.md``) the
        observed cells are closer to the real ones as a whole (energy distance 1.65 against 3.20) and gene by gene.
    seed
        Seeds the balanced draw, the choice of control cells and the sampling of counts.
    batch_size
        Cells per forward pass; the draws depend on it (the same seed and batch_size give the same prediction).

    Returns
    -------
    A new AnnData of predicted cells × the model's genes. ``X``: the cells (``cells``) as counts, which can be
    normalised like real data (draws with each source cell's library size for ``"decoded"``; for non-count
    likelihoods, on the model's scale). ``layers["expression"]``: the same cells on the scale they are scored on,
    log-normalised (``log1p`` of counts per 10,000) for count likelihoods, the model's scale otherwise, bias removed
    (``correct_bias``); :func:`scvae.tl.evaluate_perturbation` scores this layer. ``layers["expected_frequency"]``:
    the decoder's expected frequencies (rows sum to 1) for count likelihoods, or ``layers["expected"]``: the
    likelihood's mean otherwise. ``obs``: the source cells' columns with ``condition_key`` set to ``stimulated``,
    ``predicted=True`` and ``source_cell``. ``var["change"]``: the predicted mean change of each gene from the
    target's control cells, the mean of ``layers["expression"]`` minus the real control cells' mean. With
    ``interval``: ``var["change_lower"]`` and ``var["change_upper"]``. ``uns["scvae_perturbation"]``: method,
    ``cells``, δ (for ``"delta"``), labels, the cell types and cell counts used, and the calibration.

    Examples
    --------
    >>> model = scvae.model.fit(train, n_latent=10)
    >>> pred = model.predict_perturbation(train, condition_key="condition", control="control",
    ...                                   stimulated="stimulated", cell_type_key="cell_type", target="CD4 T")
    """
    seed = check_seed(seed)
    check_choice("method", method, METHODS)
    check_int("n_neighbors", n_neighbors)
    check_int("interval_genes", interval_genes)
    if interval is not None:
        check_number("interval (a level, e.g. 0.9, or None)", interval, low=0.0, high=1.0, strict=True)
    check_int("n_cells", n_cells, optional=True)
    check_int("n_per_type", n_per_type, optional=True)  # used by "delta" only, but checked whatever the method
    check_bool("correct_bias", correct_bias)
    if not 0.0 <= check_number("similar", similar) <= 1.0:
        raise InputError(f"similar is a weight from 0 to 1 (0: the model's change alone), got {similar!r}")
    check_choice("cells", cells, ("decoded", "observed"))
    cond, types, (control, stimulated, target) = check_inputs(
        adata, condition_key, control, stimulated, cell_type_key, target, min_cells
    )
    conditioned = model_conditions_on(model, condition_key, control, stimulated, needed=method == "counterfactual")

    x, codes = model.read(adata)
    rng = np.random.default_rng(seed)
    controls = source = np.flatnonzero((types == target) & (cond == control))
    n_predicted = max(MIN_PREDICTED_CELLS, len(source)) if n_cells is None else int(n_cells)
    reps, rest = divmod(n_predicted, len(source))  # each control cell equally often, the rest drawn (none: no draw)
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
    z = z_own = posterior_means(model, x, codes, source, batch_size)
    if method == "delta":
        z = z + balanced_delta(
            model,
            x,
            codes,
            cond,
            types,
            control=control,
            stimulated=stimulated,
            target=target,
            n_per_type=n_per_type,
            min_cells=min_cells,
            seed=seed,
            batch_size=batch_size,
            record=record,
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
    is_counts = model.module.counts
    library = np.asarray(x[source].sum(axis=1), dtype=np.float64).ravel() if is_counts else None
    counts, expected = decode(model, z, decode_codes, library, batch_size, seed)
    record["decoded_with_stimulated_label"] = bool(conditioned)
    values, own = expression_values(counts, counts=is_counts), None
    if correct_bias:  # the decoder's error on these very cells, decoded without the shift
        bias, shrunk, own = decoder_bias(model, x, z_own, codes, source, library, batch_size, seed)
        values = subtract_bias(values, shrunk, counts=is_counts)
        record["bias"] = {"mean_abs": float(np.abs(bias).mean()), "mean_abs_removed": float(np.abs(shrunk).mean())}
    control_mean = expression_moments(x, controls, counts=is_counts)[0]
    if similar:  # part of the change from the types most alike the target, in gene space
        kw = dict(control=control, stimulated=stimulated, target=target, min_cells=min_cells, counts=is_counts)
        values, record["similar"] = toward_similar_types(values, control_mean, x, cond, types, weight=similar, **kw)
    if cells == "observed":  # the target's measured cells, changed cell by cell as the model changes them
        own = decode(model, z_own, codes[source], library, batch_size, seed + 1)[1] if own is None else own
        kw = dict(counts=is_counts, draws=counts, after=expected, before=own, seed=seed)
        counts, values = observed_cells(x, source, values.mean(0), **kw)
    record.update(bias_corrected=bool(correct_bias), cells=cells, min_cells=int(min_cells))
    record.setdefault("similar", {"weight": 0.0})  # the model's change alone

    obs = predicted_obs(
        adata,
        source,
        condition_key=condition_key,
        stimulated=stimulated,
        suffix="-pred",
        numbered=True,
        cell_type=(cell_type_key, target),
    )
    layer = "expected_frequency" if is_counts else "expected"
    out = AnnData(
        X=sp.csr_matrix(counts) if is_counts else counts,
        obs=obs,
        var=adata.var.loc[model.genes].copy(),
        layers={layer: expected, EXPRESSION_LAYER: values.astype(np.float32)},
        uns={UNS_KEY: record},
    )
    out.var["change"] = values.mean(0) - control_mean
    if interval is not None:
        labels = dict(condition_key=condition_key, control=control, stimulated=stimulated, cell_type_key=cell_type_key)
        same = dict(method=method, n_cells=n_cells, n_per_type=n_per_type, n_neighbors=n_neighbors, similar=0.0)
        # calibrated on the model alone: see the docstring of interval
        half, calibration = change_intervals(
            model, adata, **labels, target=target, level=float(interval), n_genes=interval_genes,
            min_cells=min_cells, seed=seed, batch_size=batch_size, correct_bias=correct_bias, **same,
        )  # fmt: skip
        out.var["change_lower"] = out.var["change"] - half
        out.var["change_upper"] = out.var["change"] + half
        record["interval"] = calibration
    return out


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
    genes), calibrated on the other cell types: a split-conformal interval with cell types as the units, widened
    by the sampling error of the observed change.

    The interval is for the change a stimulated sample as large as the target's control sample would show: the
    model's error plus the sampling error of both means. Each other cell type ``t`` with at least ``min_cells``
    cells in both conditions is predicted in turn, as ``predict_perturbation`` (same ``predict_kw``) would, from
    the cells of the types other than ``t`` and ``target``. Its error e, real minus predicted change of each
    gene, is partly sampling noise of its real change (variance se² = var(control) / n_control +
    var(stimulated) / n_stimulated, per gene, so that E[e²] = m² + se² for a model error m); the model's share,
    √max(e² − se², 0), is divided by the gene's scale :func:`interval_scale` (from the real changes of the types
    other than ``t`` and ``target``), and ``q_t`` is the ``level`` quantile of those over ``t``'s ``n_genes``
    genes of largest real change. The half-width for the target is √((q s)² + z² se²), with q = max_t q_t, s
    the scale from all the other types' changes, z the normal quantile of ``level`` (1.645 for 0.9) and
    se² = 2 var(control) / n_control from the target's control cells (the stimulated cells, not seen, are taken
    as equally variable and as many). If the cell types were exchangeable, the target's own ``q`` would exceed
    the largest of ``K`` others with probability 1 / (K + 1), so with ``K`` = 6 types the target's top genes are
    covered at ``level`` or more with probability about 0.86. The model has seen the other types' stimulated
    cells in training, which makes their errors smaller than a truly unseen type's
    (``benchmarks/results/perturbation_kang.md`` reports the coverage).

    Parameters
    ----------
    model
        A trained :class:`~scvae.model.SCVAE`, as for :func:`predict_perturbation`.
    adata
        Cells with the model's genes, holding the target's control cells and other cell types in both conditions.
        Not modified.
    condition_key, control, stimulated
        The ``obs`` column of the condition and its control and stimulated categories.
    cell_type_key, target
        The ``obs`` column of cell types and the cell type the intervals are for.
    level
        Level of the intervals, in (0, 1).
    n_genes
        Each other type's genes of largest absolute real change whose scaled errors give its quantile ``q_t``.
    min_cells
        The fewest cells a type needs in each condition to be calibrated on (at least three such types), also
        passed to each calibration prediction.
    seed, batch_size
        Passed to each calibration prediction (:func:`predict_perturbation`).
    **predict_kw
        Further keyword arguments of :func:`predict_perturbation`, passed unchanged to each calibration
        prediction: ``method``, ``n_cells``, ``n_per_type``, ``n_neighbors``, ``correct_bias``, ``similar`` (what
        :func:`predict_perturbation` passes with ``interval``); not the arguments named above.

    Returns
    -------
    The half-widths (one per gene of the model) and a record: the level, the per-type quantiles ``q_t``, the
    chosen quantile and the number of genes.
    """
    seed = check_seed(seed)
    if "interval" in predict_kw:
        raise InputError("change_intervals calibrates the interval itself; do not pass interval= through it")
    cond, types, (control, stimulated, target) = check_inputs(
        adata, condition_key, control, stimulated, cell_type_key, target, min_cells
    )
    check_int("n_genes", n_genes)
    check_number("level (e.g. 0.9)", level, low=0.0, high=1.0, strict=True)
    groups = type_groups(cond, types, control=control, stimulated=stimulated, exclude=[target], min_cells=min_cells)
    if len(groups) < 3:
        raise InputError(
            f"intervals are calibrated by predicting each other cell type from the rest, which needs at least 3 "
            f"cell types besides {target!r} with {min_cells} or more cells in both {control!r} and {stimulated!r} "
            f"(found {len(groups)}: {list(groups)}); use interval=None or lower min_cells"
        )
    x = model.read(adata)[0]
    counts = model.module.counts
    real, noise = [], []  # per type: real change, and its sampling variance
    for ctrl, stim in groups.values():
        (mc, vc), (ms, vs) = (expression_moments(x, rows, counts=counts) for rows in (ctrl, stim))
        real.append(ms - mc)
        noise.append(vc / len(ctrl) + vs / len(stim))
    real = np.stack(real)
    z = float(norm.ppf(0.5 + level / 2))
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
            **{"cells": "decoded", **predict_kw},  # only the means are used, the same for either kind of cells
        )
        error = np.square(real[i] - pred.var["change"].to_numpy())
        scaled = np.sqrt(np.maximum(error - noise[i], 0.0)) / interval_scale(np.delete(real, i, 0))
        top = np.argsort(-np.abs(real[i]), kind="stable")[: min(n_genes, real.shape[1])]
        quantiles[t] = float(np.quantile(scaled[top], level))
    q = max(quantiles.values())
    logger.info("interval calibrated on %d cell types: scaled-error quantiles %s", len(groups), quantiles)
    own = np.flatnonzero((types == target) & (cond == control))
    target_noise = 2.0 * expression_moments(x, own, counts=counts)[1] / len(own)
    record = {"level": level, "quantile": q, "type_quantiles": quantiles, "n_genes": int(n_genes)}
    return np.sqrt(np.square(q * interval_scale(real)) + z * z * target_noise), record
