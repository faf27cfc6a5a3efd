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

from .data import InputError, get_matrix

logger = logging.getLogger(__name__)

DIRECTIONS = ("up", "down", "abs")


def log_normalize(adata: AnnData, *, layer: str | None = None, target_sum: float = 1e4) -> np.ndarray | sp.csr_matrix:
    """``log1p(x / total × target_sum)`` of every cell, as a new float32 matrix (CSR if the input is sparse).

    Cells with zero total stay zero. ``adata`` is not modified."""
    x = get_matrix(adata, layer)
    totals = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    scale = target_sum / np.where(totals > 0, totals, 1.0)
    if sp.issparse(x):
        out = sp.csr_matrix(sp.diags(scale) @ x, dtype=np.float32)
        out.data = np.log1p(out.data)
        return out
    return np.log1p(np.asarray(x, dtype=np.float64) * scale[:, None]).astype(np.float32)


def _expression(adata: AnnData, normalized: bool, layer: str | None) -> np.ndarray | sp.csr_matrix:
    if normalized:
        x = get_matrix(adata, layer)
        return x.astype(np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    return log_normalize(adata, layer=layer)


def gene_means(adata: AnnData, *, layer: str | None = None, normalized: bool = False) -> pd.Series:
    """Mean log-normalised expression of each gene over the cells of ``adata``.

    ``normalized=True``: the data are already log-normalised and are averaged as they are."""
    x = _expression(adata, normalized, layer)
    return pd.Series(np.asarray(x.mean(axis=0)).ravel(), index=pd.Index(adata.var_names.astype(str)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _genes_in(adata: AnnData, genes: Sequence[str], what: str) -> list[str]:
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
    n: int = 100,
    *,
    layer: str | None = None,
    normalized: bool = False,
    method: str = "wilcoxon",
    direction: str = "up",
) -> list[str]:
    """The ``n`` top differentially expressed genes of ``group1`` against ``group2`` (cells of
    ``adata.obs[groupby]``), by scanpy's ``rank_genes_groups`` on a log-normalised copy.

    ``direction``: ``"up"`` (highest scores, higher in ``group1``; scGen's choice), ``"down"`` or ``"abs"``
    (largest absolute score). ``adata`` is not modified."""
    import scanpy as sc

    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if groupby not in adata.obs.columns:
        raise InputError(f"{groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:10]})")
    labels = adata.obs[groupby].astype(str).to_numpy()
    for g in (group1, group2):
        if (labels == str(g)).sum() < 2:
            raise InputError(f"group {g!r} of adata.obs[{groupby!r}] needs at least 2 cells to rank genes")
    keep = np.flatnonzero(np.isin(labels, [str(group1), str(group2)]))
    x = _expression(adata, normalized, layer)[keep]
    tmp = AnnData(
        X=x,
        obs=pd.DataFrame({"group": pd.Categorical(labels[keep])}, index=pd.Index([str(i) for i in range(len(keep))])),
        var=pd.DataFrame(index=pd.Index(adata.var_names.astype(str))),
        uns={"log1p": {"base": None}},
    )
    sc.tl.rank_genes_groups(tmp, "group", groups=[str(group1)], reference=str(group2), method=method,
                            n_genes=tmp.n_vars)
    res = tmp.uns["rank_genes_groups"]
    names = np.asarray(res["names"][str(group1)]).astype(str)
    scores = np.asarray(res["scores"][str(group1)], dtype=np.float64)
    if direction == "down":
        order = np.argsort(scores, kind="stable")
    elif direction == "abs":
        order = np.argsort(-np.abs(scores), kind="stable")
    else:
        order = np.argsort(-scores, kind="stable")
    return [str(g) for g in names[order[:n]]]


def mean_r2(
    pred: AnnData,
    real: AnnData,
    genes: Sequence[str] | None = None,
    *,
    pred_normalized: bool = False,
    real_normalized: bool = False,
) -> float:
    """Squared Pearson correlation of per-gene mean log-normalised expression of ``pred`` and ``real`` cells
    (scGen's R²; see the module docstring), over ``genes`` (default: all of ``pred``'s genes).

    Both are restricted to ``pred``'s genes before normalising; ``*_normalized=True`` marks data that are
    already log-normalised."""
    all_genes = _genes_in(real, pred.var_names, "real")
    mp = gene_means(pred, normalized=pred_normalized)
    mr = gene_means(real[:, all_genes], normalized=real_normalized)
    use = all_genes if genes is None else _genes_in(pred, genes, "pred")
    return _pearson(mp[use].to_numpy(), mr[use].to_numpy()) ** 2


def evaluate_perturbation(
    pred: AnnData,
    real_stim: AnnData,
    real_ctrl: AnnData,
    *,
    n_top: int = 100,
    top_genes: Sequence[str] | None = None,
    pred_normalized: bool = False,
    direction: str = "up",
) -> dict[str, Any]:
    """Compare predicted stimulated cells with the real ones, scGen-style.

    All three are restricted to ``pred``'s genes and log-normalised (copies). The top DEGs are found with
    :func:`rank_de_genes` (Wilcoxon) on the real stimulated vs control cells, unless ``top_genes`` is given.

    Parameters
    ----------
    pred
        Predicted cells (counts, e.g. from :func:`scvae.perturbation.predict_perturbation`; or log-normalised
        with ``pred_normalized=True``, e.g. :func:`scvae.perturbation.linear_shift`).
    real_stim, real_ctrl
        Real stimulated and control cells of the same cell type (raw counts).
    n_top
        Number of top DEGs.
    direction
        Which DEGs (see :func:`rank_de_genes`); ``"up"`` follows scGen.

    Returns
    -------
    dict with ``r2_all`` and ``r2_top`` (squared Pearson correlation of gene means over all genes / the top
    DEGs), ``delta_corr`` and ``delta_corr_top`` (Pearson correlation over genes of the predicted change
    mean(pred) − mean(control) with the real change mean(real) − mean(control)), ``n_genes``, ``top_genes``,
    and ``means``: a DataFrame of per-gene means (columns ``control``, ``real``, ``predicted``).
    """
    genes = [str(g) for g in pred.var_names]
    _genes_in(real_stim, genes, "real_stim")
    _genes_in(real_ctrl, genes, "real_ctrl")
    stim, ctrl = real_stim[:, genes], real_ctrl[:, genes]
    means = pd.DataFrame(
        {
            "control": gene_means(ctrl),
            "real": gene_means(stim),
            "predicted": gene_means(pred, normalized=pred_normalized).to_numpy(),
        }
    )
    if top_genes is None:
        both = AnnData(
            X=sp.vstack([sp.csr_matrix(get_matrix(stim, None)), sp.csr_matrix(get_matrix(ctrl, None))]),
            obs=pd.DataFrame(
                {"group": ["stimulated"] * stim.n_obs + ["control"] * ctrl.n_obs},
                index=pd.Index([str(i) for i in range(stim.n_obs + ctrl.n_obs)]),
            ),
            var=pd.DataFrame(index=pd.Index(genes)),
        )
        top_genes = rank_de_genes(both, "group", "stimulated", "control", n_top, direction=direction)
    else:
        top_genes = _genes_in(pred, top_genes, "pred")
    top = list(top_genes)
    d_pred = means["predicted"] - means["control"]
    d_real = means["real"] - means["control"]
    return {
        "r2_all": _pearson(means["predicted"], means["real"]) ** 2,
        "r2_top": _pearson(means.loc[top, "predicted"], means.loc[top, "real"]) ** 2,
        "delta_corr": _pearson(d_pred, d_real),
        "delta_corr_top": _pearson(d_pred[top], d_real[top]),
        "n_genes": len(genes),
        "top_genes": top,
        "means": means,
    }
