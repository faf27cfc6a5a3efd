"""Evaluating predicted expression against real cells, the way perturbation-prediction papers do (scGen).

Everything is computed on log-normalised expression, ``log1p(x / total × 1e4)`` per cell (what
``sc.pp.normalize_total(target_sum=1e4)`` then ``sc.pp.log1p`` give), on copies: the AnnData passed in are
never changed.

R² convention: :func:`mean_r2` is the **squared Pearson correlation** of per-gene mean expression between two
sets of cells (scGen's ``reg_mean_plot``: ``scipy.stats.linregress(...).rvalue ** 2``). It is not the
coefficient of determination 1 − SS_res / SS_tot: a prediction that is off by a constant factor still scores 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.stats import wasserstein_distance

from .conditions import EXPRESSION_LAYER
from .data import (
    InputError,
    check_choice,
    check_int,
    check_seed,
    get_matrix,
    label_text,
    label_texts,
    normalized_matrix,
)

logger = logging.getLogger(__name__)

DIRECTIONS = ("up", "down", "abs")


def _expression(adata: AnnData, normalized: bool, layer: str | None, name: str = "adata") -> np.ndarray | sp.csr_matrix:
    if normalized:
        x = get_matrix(adata, layer, name)
        return x.astype(np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    return normalized_matrix(adata, layer=layer, name=name)


def _prediction_source(pred: AnnData, pred_normalized: bool) -> tuple[str | None, bool]:
    """The layer a prediction is scored from and whether it is already log-normalised (see prediction_matrix)."""
    if EXPRESSION_LAYER in pred.layers and not pred_normalized:
        return EXPRESSION_LAYER, True
    return None, pred_normalized


def prediction_matrix(pred: AnnData, pred_normalized: bool = False) -> np.ndarray | sp.csr_matrix:
    """Predicted cells on the scale they are scored on: ``pred.layers["expression"]`` when it is there (the
    output of :func:`scvae.perturbation.predict_perturbation`, already log-normalised and corrected for the
    decoder's bias), else ``pred.X`` log-normalised (or as it is, with ``pred_normalized=True``)."""
    layer, normalized = _prediction_source(pred, pred_normalized)
    return _expression(pred, normalized, layer, "pred")


def gene_means(adata: AnnData, *, layer: str | None = None, normalized: bool = False) -> pd.Series:
    """Mean log-normalised expression of each gene over the cells of ``adata``.

    ``normalized=True``: the data are already log-normalised and are averaged as they are.

    Parameters
    ----------
    adata
        Cells × genes: counts, or log-normalised values with ``normalized=True``.
    layer
        Read ``adata.layers[layer]`` instead of ``adata.X``.
    normalized
        The data are already log-normalised: average them as they are.

    Returns
    -------
    The mean of each gene, indexed by ``adata.var_names`` (as strings).
    """
    x = _expression(adata, normalized, layer)
    return pd.Series(np.asarray(x.mean(axis=0)).ravel(), index=pd.Index(adata.var_names.astype(str)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _genes_in(adata: AnnData, genes: Sequence[str], what: str) -> list[str]:
    if not isinstance(adata, AnnData):
        raise InputError(f"{what} must be an AnnData object (cells × genes), got {type(adata).__name__}")
    genes = [str(g) for g in genes]
    names = pd.Index(adata.var_names.astype(str))
    missing = [g for g in genes if g not in names]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(genes)} genes are missing from {what}.var_names (e.g. {missing[:5]}); "
            "compare cells over the same genes"
        )
    return genes


def rank_de_genes(
    adata: AnnData,
    groupby: str,
    group1: str,
    group2: str,
    *,
    n: int = 100,
    layer: str | None = None,
    normalized: bool = False,
    method: str = "wilcoxon",
    direction: str = "up",
) -> list[str]:
    """The ``n`` top differentially expressed genes of ``group1`` against ``group2`` (cells of
    ``adata.obs[groupby]``), by scanpy's ``rank_genes_groups`` on a log-normalised copy.

    ``direction``: ``"up"`` (highest scores, higher in ``group1``; scGen's choice), ``"down"`` or ``"abs"``
    (largest absolute score). ``adata`` is not modified.

    Parameters
    ----------
    adata
        Cells × genes: counts, or log-normalised values with ``normalized=True``.
    groupby
        The ``obs`` column holding the groups (compared as strings).
    group1, group2
        The group whose genes are ranked and the reference group; each needs at least 2 cells.
    n
        Number of genes returned.
    layer
        Read ``adata.layers[layer]`` instead of ``adata.X``.
    normalized
        The data are already log-normalised: ranked as they are.
    method
        Passed to ``sc.tl.rank_genes_groups`` (e.g. ``"wilcoxon"``, ``"t-test"``).
    direction
        ``"up"``, ``"down"`` or ``"abs"``: the order of the scores the top genes are taken from (ties in
        scanpy's order).

    Returns
    -------
    The names of the top ``n`` genes, best first.
    """
    import scanpy as sc

    group1, group2 = label_texts([group1, group2])
    if group1 == group2:
        raise InputError(f"group1 and group2 are the same group ({group1!r}); compare two different groups")
    n = check_int("n", n)
    check_choice("direction", direction, DIRECTIONS)
    if groupby not in adata.obs.columns:
        raise InputError(f"{groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:10]})")
    labels = label_text(adata.obs[groupby]).to_numpy()
    for g in (group1, group2):
        if (labels == g).sum() < 2:
            raise InputError(f"group {g!r} of adata.obs[{groupby!r}] needs at least 2 cells to rank genes")
    keep = np.flatnonzero(np.isin(labels, [group1, group2]))
    x = _expression(adata, normalized, layer)[keep]
    tmp = AnnData(
        X=x,
        obs=pd.DataFrame({"group": pd.Categorical(labels[keep])}, index=pd.Index([str(i) for i in range(len(keep))])),
        var=pd.DataFrame(index=pd.Index(adata.var_names.astype(str))),
        uns={"log1p": {"base": None}},
    )
    sc.tl.rank_genes_groups(tmp, "group", groups=[group1], reference=group2, method=method, n_genes=tmp.n_vars)
    res = tmp.uns["rank_genes_groups"]
    names = np.asarray(res["names"][group1]).astype(str)
    scores = np.asarray(res["scores"][group1], dtype=np.float64)
    key = {"down": scores, "abs": -np.abs(scores)}.get(direction, -scores)
    order = np.argsort(key, kind="stable")
    return [str(g) for g in names[order[:n]]]


def mean_r2(
    pred: AnnData,
    real: AnnData,
    *,
    genes: Sequence[str] | None = None,
    pred_normalized: bool = False,
    real_normalized: bool = False,
) -> float:
    """Squared Pearson correlation of per-gene mean log-normalised expression of ``pred`` and ``real`` cells
    (scGen's R²; see the module docstring), over ``genes`` (default: all of ``pred``'s genes).

    Both are restricted to ``pred``'s genes before normalising; ``*_normalized=True`` marks data that are
    already log-normalised.

    Parameters
    ----------
    pred
        Predicted cells, scored as :func:`prediction_matrix` reads them (``layers["expression"]`` when it is there).
    real
        Real cells; must hold every gene of ``pred``.
    genes
        Genes of ``pred`` to correlate the means over; default (None): all of ``pred``'s genes.
    pred_normalized, real_normalized
        ``pred.X`` / ``real.X`` hold log-normalised values (averaged as they are).

    Returns
    -------
    The squared Pearson correlation; NaN when fewer than two genes are used or either set of means is constant.
    """
    all_genes = _genes_in(real, pred.var_names, "real")
    layer, normalized = _prediction_source(pred, pred_normalized)
    mp = gene_means(pred, layer=layer, normalized=normalized)
    mr = gene_means(real[:, all_genes], normalized=real_normalized)
    use = all_genes if genes is None else _genes_in(pred, genes, "pred")
    return _pearson(mp[use].to_numpy(), mr[use].to_numpy()) ** 2


def top_changed_genes(means: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` genes with the largest |mean(real) − mean(control)| in a ``means`` table of
    :func:`evaluate_perturbation` (both directions of change; ties in gene order).

    Parameters
    ----------
    means
        Per-gene means indexed by gene, with columns ``real`` and ``control`` (e.g. the ``"means"`` of
        :func:`evaluate_perturbation`).
    n
        Number of genes returned (all of them if ``n`` exceeds the number of genes).

    Returns
    -------
    The gene names, largest change first.
    """
    order = np.argsort(-(means["real"] - means["control"]).abs().to_numpy(), kind="stable")
    return [str(g) for g in means.index[order[: check_int("n", n)]]]


def _sign_agreement(d_pred: pd.Series, d_real: pd.Series) -> float:
    """Share of genes whose predicted change has the sign of the real one (a gene with no real change counts
    as right only when the prediction does not change it either)."""
    return float(np.mean(np.sign(d_pred.to_numpy()) == np.sign(d_real.to_numpy()))) if len(d_real) else float("nan")


def e_distances(pred: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    """E-distance and energy distance between two sets of points (cells × dimensions).

    - E-distance, as scPerturb / pertpy / scPerturBench compute it: 2 E‖X − Y‖² − E‖X − X′‖² − E‖Y − Y′‖²,
      squared Euclidean distances averaged over all pairs (self-pairs included). With squared distances this is
      exactly 2‖mean(X) − mean(Y)‖²: it compares the centres of the two clouds, not their spread.
    - Energy distance (Székely): the same with Euclidean (unsquared) distances, which is 0 only when the two
      distributions are equal, so it also penalises a prediction that is too narrow or too wide.

    Both average over all pairs, self-pairs included (as pertpy does): for finite sets they are biased upwards by
    roughly the within-set spread divided by the number of cells, so sets of different sizes are not compared on an
    equal footing (two halves of the real cells, each half as large, pay more of it than a full-size prediction).

    Parameters
    ----------
    pred, real
        The two sets of points, cells × dimensions (same dimensions, finite; any number of cells each).

    Returns
    -------
    (e_distance, energy_distance) as floats."""
    from scipy.spatial.distance import cdist

    a, b = np.asarray(pred, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError(f"pred and real must be finite cells × dimensions arrays, of shapes {a.shape}, {b.shape}")
    ab, aa, bb = cdist(a, b, "sqeuclidean"), cdist(a, a, "sqeuclidean"), cdist(b, b, "sqeuclidean")
    e = 2.0 * ab.mean() - aa.mean() - bb.mean()
    energy = 2.0 * np.sqrt(ab).mean() - np.sqrt(aa).mean() - np.sqrt(bb).mean()
    return float(e), float(energy)


def _pca_distances(
    pred: np.ndarray, stim: np.ndarray, ctrl: np.ndarray, n_pcs: int, max_cells: int, seed: int
) -> dict[str, float]:
    """E-distance and energy distance of the predicted and the control cells to the real stimulated cells, in a
    PCA of the real cells (log-normalised, centred), each group at most ``max_cells`` cells (seeded)."""
    rng = np.random.default_rng(seed)

    def sub(m: np.ndarray) -> np.ndarray:
        return m[np.sort(rng.choice(len(m), max_cells, replace=False))] if len(m) > max_cells else m

    pred, stim, ctrl = sub(pred), sub(stim), sub(ctrl)
    from sklearn.utils.extmath import randomized_svd

    real = np.vstack([stim, ctrl]).astype(np.float64)
    centre = real.mean(0)
    k = max(1, min(n_pcs, real.shape[0] - 1, real.shape[1]))
    _, _, vt = randomized_svd(real - centre, k, random_state=seed)
    basis = vt.T

    def project(m: np.ndarray) -> np.ndarray:
        return (m - centre) @ basis

    s = project(stim)
    e_pred, energy_pred = e_distances(project(pred), s)
    e_ctrl, energy_ctrl = e_distances(project(ctrl), s)
    return {
        "e_distance": e_pred,
        "energy_distance": energy_pred,
        "e_distance_control": e_ctrl,
        "energy_distance_control": energy_ctrl,
        "n_pcs": int(k),
    }


def evaluate_perturbation(
    pred: AnnData,
    real_stim: AnnData,
    real_ctrl: AnnData,
    *,
    n_top: int = 100,
    top_genes: Sequence[str] | None = None,
    pred_normalized: bool = False,
    direction: str = "up",
    n_pcs: int = 50,
    max_cells: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare predicted stimulated cells with the real ones, as scGen and scPerturBench do.

    All three are restricted to ``pred``'s genes and log-normalised (copies). Two lists of top genes are scored:

    - ``top_genes``: scGen's, the top ``n_top`` DEGs by :func:`rank_de_genes` (Wilcoxon, real stimulated vs
      control cells, ``direction="up"``: up-regulated), unless ``top_genes`` is given;
    - ``top_change``: the ``n_top`` genes with the largest real change |mean(real) − mean(control)|, both
      directions (scPerturBench's and PerturBench's choice, :func:`top_changed_genes`).

    Parameters
    ----------
    pred
        Predicted cells: the output of :func:`scvae.perturbation.predict_perturbation`, scored by its
        ``layers["expression"]`` (log-normalised, the decoder's bias removed); otherwise counts in ``X``, or
        log-normalised values in ``X`` with ``pred_normalized=True`` (e.g. :func:`scvae.perturbation.linear_shift`).
        See :func:`prediction_matrix`.
    real_stim, real_ctrl
        Real stimulated and control cells of the same cell type (raw counts).
    n_top
        Number of top genes in each list.
    top_genes
        scGen's list given directly (genes of ``pred``), instead of ranking the real cells' DEGs.
    pred_normalized
        ``pred.X`` holds log-normalised values (see ``pred`` above).
    direction
        Which Wilcoxon DEGs (see :func:`rank_de_genes`); ``"up"`` follows scGen.
    n_pcs, max_cells, seed
        The PCA of the E-distances (components, at most) and the subsampling of each group of cells
        (at most ``max_cells``, drawn with ``seed``).

    Returns
    -------
    dict with, for the mean expression of each gene (log-normalised):

    - ``r2_all``, ``r2_top``, ``r2_top_change``: squared Pearson correlation of predicted and real gene means
      over all genes / the Wilcoxon DEGs / the top-changed genes (scGen's R²);
    - ``delta_corr``, ``delta_corr_top``, ``delta_corr_top_change``: Pearson-delta, the Pearson correlation over
      genes of the predicted change mean(pred) − mean(control) with the real change mean(real) − mean(control),
      over the same three gene sets;
    - ``sign_top``, ``sign_top_change``: the share of those top genes whose predicted change has the sign of the
      real one;

    for the cells themselves, in a PCA (``n_pcs`` components) of the real stimulated and control cells:

    - ``e_distance``: E-distance of the predicted to the real stimulated cells as scPerturBench computes it
      (squared Euclidean; equal to 2‖difference of the means‖², see :func:`e_distances`); lower is better;
    - ``energy_distance``: the same with Euclidean distances, sensitive to the spread of the cells too;
    - ``e_distance_control``, ``energy_distance_control``: the real control cells' distances to the real
      stimulated ones (the distance of predicting no change), to scale the two above;
    - ``wasserstein_top_change``: gene by gene, the 1-D Wasserstein distance between the predicted and the real
      stimulated cells' values (all cells), averaged over the top-changed genes: how far each gene's distribution
      is from the real one (what a violin plot shows); lower is better;

    when ``pred.var`` holds ``change_lower`` and ``change_upper`` (``predict_perturbation(..., interval=0.9)``):

    - ``interval_coverage``, ``interval_coverage_top``, ``interval_coverage_top_change``: the share of all
      genes / the Wilcoxon DEGs / the top-changed genes whose real change lies within its interval;
    - ``interval_width_top_change``: the median width of the intervals of the top-changed genes;

    and ``n_genes``, ``top_genes``, ``top_change``, ``n_pcs``, and ``means``: a DataFrame of per-gene means
    (columns ``control``, ``real``, ``predicted``).
    """
    seed, direction = check_seed(seed), check_choice("direction", direction, DIRECTIONS)
    n_top, n_pcs, max_cells = check_int("n_top", n_top), check_int("n_pcs", n_pcs), check_int("max_cells", max_cells)
    genes = _genes_in(pred, getattr(pred, "var_names", []), "pred")
    _genes_in(real_stim, genes, "real_stim")
    _genes_in(real_ctrl, genes, "real_ctrl")
    stim, ctrl = real_stim[:, genes], real_ctrl[:, genes]
    x_pred = prediction_matrix(pred, pred_normalized)
    x_stim, x_ctrl = normalized_matrix(stim, name="real_stim"), normalized_matrix(ctrl, name="real_ctrl")
    names = pd.Index(genes)
    means = pd.DataFrame(
        {
            "control": np.asarray(x_ctrl.mean(axis=0), dtype=np.float64).ravel(),
            "real": np.asarray(x_stim.mean(axis=0), dtype=np.float64).ravel(),
            "predicted": np.asarray(x_pred.mean(axis=0), dtype=np.float64).ravel(),
        },
        index=names,
    )
    if top_genes is None:
        both = AnnData(
            X=sp.vstack(
                [sp.csr_matrix(get_matrix(stim, None, "real_stim")), sp.csr_matrix(get_matrix(ctrl, None, "real_ctrl"))]
            ),
            obs=pd.DataFrame(
                {"group": ["stimulated"] * stim.n_obs + ["control"] * ctrl.n_obs},
                index=pd.Index([str(i) for i in range(stim.n_obs + ctrl.n_obs)]),
            ),
            var=pd.DataFrame(index=names),
        )
        top_genes = rank_de_genes(both, "group", "stimulated", "control", n=n_top, direction=direction)
    else:
        top_genes = _genes_in(pred, top_genes, "pred")
    top, changed = list(top_genes), top_changed_genes(means, n_top)
    d_pred = means["predicted"] - means["control"]
    d_real = means["real"] - means["control"]

    def dense(m: np.ndarray | sp.spmatrix) -> np.ndarray:
        return m.toarray() if sp.issparse(m) else np.asarray(m)

    distances = _pca_distances(dense(x_pred), dense(x_stim), dense(x_ctrl), n_pcs, max_cells, seed)
    a, b = (dense(m[:, names.get_indexer(changed)]) for m in (x_pred, x_stim))  # the top-changed genes' values
    w = [wasserstein_distance(p, r) for p, r in zip(a.T, b.T, strict=True)]
    distances["wasserstein_top_change"] = float(np.mean(w))
    intervals = {}
    if {"change_lower", "change_upper"} <= set(pred.var.columns):
        lower = pred.var["change_lower"].set_axis(names).astype(np.float64)
        upper = pred.var["change_upper"].set_axis(names).astype(np.float64)
        inside = (d_real >= lower) & (d_real <= upper)
        intervals = {
            "interval_coverage": float(inside.mean()),
            "interval_coverage_top": float(inside[top].mean()),
            "interval_coverage_top_change": float(inside[changed].mean()),
            "interval_width_top_change": float((upper - lower)[changed].median()),
        }
    return {
        "r2_all": _pearson(means["predicted"], means["real"]) ** 2,
        "r2_top": _pearson(means.loc[top, "predicted"], means.loc[top, "real"]) ** 2,
        "r2_top_change": _pearson(means.loc[changed, "predicted"], means.loc[changed, "real"]) ** 2,
        "delta_corr": _pearson(d_pred, d_real),
        "delta_corr_top": _pearson(d_pred[top], d_real[top]),
        "delta_corr_top_change": _pearson(d_pred[changed], d_real[changed]),
        "sign_top": _sign_agreement(d_pred[top], d_real[top]),
        "sign_top_change": _sign_agreement(d_pred[changed], d_real[changed]),
        **distances,
        **intervals,
        "n_genes": len(genes),
        "top_genes": top,
        "top_change": changed,
        "means": means,
    }
