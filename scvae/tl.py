"""Tools in Scanpy's manner: scvae's differential expression written as ``sc.tl.rank_genes_groups`` writes it,
labels transferred from a reference to a mapped query, and (from :mod:`scvae.scoring`) the scoring of predicted
perturbation responses against real cells."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .data import (
    InputError,
    as_label_list,
    check_int,
    check_seed,
    label_text,
    log_normalize,
    obs_column,
    refuse_view,
)
from .scoring import e_distances, evaluate_perturbation, gene_means, mean_r2, rank_de_genes, top_changed_genes

__all__ = [
    "e_distances",
    "evaluate_perturbation",
    "gene_means",
    "log_normalize",
    "mean_r2",
    "rank_de_genes",
    "rank_genes_groups",
    "top_changed_genes",
    "transfer_labels",
]

if TYPE_CHECKING:  # pragma: no cover
    from .trained import SCVAE

logger = logging.getLogger(__name__)


def rank_genes_groups(
    adata: AnnData,
    model: SCVAE,
    groupby: str,
    *,
    groups: str | Sequence[str] = "all",
    reference: str = "rest",
    mode: str = "change",
    delta: float = 0.25,
    batch_correction: bool = False,
    n_samples: int = 5000,
    fdr: float = 0.05,
    n_genes: int | None = None,
    key_added: str = "rank_genes_groups_scvae",
    seed: int = 0,
) -> None:
    """Rank genes of each group against the rest (or ``reference``) with the model's Bayesian differential
    expression (:func:`scvae.de.differential_expression`), and write the result in the layout of
    ``scanpy.tl.rank_genes_groups``, so that ``sc.pl.rank_genes_groups*`` and ``sc.get.rank_genes_groups_df``
    read it unchanged (pass ``key=key_added``).

    Parameters
    ----------
    adata
        Cells with the model's genes and labels, and ``obs[groupby]``.
    model
        A trained :class:`~scvae.model.SCVAE` with a count likelihood.
    groupby, groups, reference
        Groups are the categories of ``adata.obs[groupby]`` (``"all"`` or a list); each is compared with
        ``reference`` (``"rest"``: all other cells, or one category).
    mode, delta, batch_correction, n_samples, fdr, seed
        See :func:`scvae.de.differential_expression`.
    n_genes
        Genes kept per group (default: all).
    key_added
        ``adata.uns`` key of the result.

    Notes
    -----
    Fields written, per group, genes sorted by decreasing score: ``names``; ``scores``, the log Bayes factor of
    up-regulation in the group (``mode="change"``: of LFC > ``delta``; ties broken by the fold change);
    ``logfoldchanges``, the posterior mean log2 fold change; ``pvals``, the posterior probability of no
    up-regulation (1 − P(up)); ``pvals_adj``, the posterior expected false discovery proportion of the genes
    ranked up to this one. These are Bayesian quantities in the places scanpy's frequentist ones go: a cut at
    ``pvals_adj < 0.05`` selects a gene list with an expected false discovery proportion below 5 %.
    ``params`` records the settings (``method="scvae"``). Only ``adata.uns[key_added]`` is written.
    """
    seed = check_seed(seed)
    from .de import differential_expression

    refuse_view(adata)  # the result would land in the view (which then becomes a copy), not in its parent
    if not isinstance(key_added, str) or not key_added:
        raise InputError(f"key_added must be a non-empty string (the uns key to write), got {key_added!r}")
    held = adata.uns.get(key_added)
    if held is not None and not (isinstance(held, Mapping) and held.get("params", {}).get("method") == "scvae"):
        raise InputError(
            f"key_added={key_added!r}: adata.uns[{key_added!r}] holds something else (not an earlier scvae "
            f"ranking); choose another key_added, or delete it first"
        )
    categories = sorted(set(label_text(obs_column(adata, groupby, "groupby"))))  # those some cell has, as text
    wanted = categories if isinstance(groups, str) and groups == "all" else as_label_list(groups)
    if not (isinstance(reference, str) and reference == "rest"):
        reference = as_label_list(reference)[0]
    unknown = [g for g in wanted + ([] if reference == "rest" else [reference]) if g not in categories]
    if unknown:
        raise InputError(f"{unknown} not among the categories of adata.obs[{groupby!r}] ({categories})")
    wanted = [g for g in wanted if g != reference]
    if not wanted:
        raise InputError(f"no groups to rank besides the reference {reference!r}; give groups= other categories")
    n_genes = check_int("n_genes", n_genes, optional=True)
    dtypes = dict(names="O", scores="float32", logfoldchanges="float32", pvals="float64", pvals_adj="float64")
    fields: dict[str, dict[str, np.ndarray]] = {k: {} for k in dtypes}
    for i, group in enumerate(wanted):
        df = differential_expression(
            model,
            adata,
            groupby=groupby,
            group1=group,
            group2=None if reference == "rest" else reference,
            mode=mode,
            delta=delta,
            batch_correction=batch_correction,
            n_samples=n_samples,
            fdr=fdr,
            seed=seed + i,
        )
        p_up = df["proba_up"].to_numpy()
        score = np.log(p_up + 1e-8) - np.log(1.0 - p_up + 1e-8)
        order = np.lexsort((-df["lfc_mean"].to_numpy(), -score))[: n_genes or len(df)]
        not_up = 1.0 - p_up[order]
        fields["names"][group] = df.index.to_numpy(dtype=object)[order]
        fields["scores"][group] = score[order].astype(np.float32)
        fields["logfoldchanges"][group] = df["lfc_mean"].to_numpy()[order].astype(np.float32)
        fields["pvals"][group] = not_up
        fields["pvals_adj"][group] = np.cumsum(not_up) / np.arange(1, len(order) + 1)
    result: dict[str, Any] = {
        "params": {
            "groupby": groupby,
            "groups": list(wanted),
            "reference": reference,
            "method": "scvae",
            "use_raw": False,
            "layer": None,
            "corr_method": "posterior expected FDR",
            "mode": mode,
            "delta": float(delta),
            "batch_correction": bool(batch_correction),
            "n_samples": int(n_samples),
            "fdr": float(fdr),
            "n_genes": int(min(n_genes or len(model.genes), len(model.genes))),
            "seed": int(seed),
        }
    }
    for name, per_group in fields.items():
        result[name] = np.rec.fromarrays([per_group[g] for g in wanted], dtype=[(g, dtypes[name]) for g in wanted])
    adata.uns[key_added] = result


def transfer_labels(
    ref_adata: AnnData,
    query_adata: AnnData,
    *,
    label_key: str,
    use_rep: str = "X_scvae",
    k: int = 15,
    key_added: str = "transferred_",
) -> pd.DataFrame:
    """Transfer labels from reference cells to query cells by a weighted vote of their nearest reference neighbours
    in a shared representation (e.g. after :func:`scvae.mapping.map_query`).

    For every query cell the ``k`` nearest reference cells in ``obsm[use_rep]`` (Euclidean) vote with weight
    ``exp(-(d / sigma)^2)``, ``d`` the distance to that neighbour and ``sigma`` the cell's distance to its ``k``-th
    neighbour (a bandwidth per query cell: dense and sparse regions are treated alike). The transferred label is the
    one with the largest total weight (ties: the first in the reference's category order); its uncertainty is
    1 − that label's share of the total weight (0: all neighbours agree; it reaches 1 − 1/n for a vote evenly split
    between n labels).

    Writes ``query_adata.obs[f"{key_added}{label_key}"]`` (categorical, with the reference's categories) and
    ``query_adata.obs[f"{key_added}{label_key}_uncertainty"]``; changes nothing else. ``ref_adata`` is not modified.

    Parameters
    ----------
    ref_adata
        Reference cells with ``obs[label_key]`` (no missing values) and ``obsm[use_rep]``.
    query_adata
        Query cells with ``obsm[use_rep]`` in the same space (same number of dimensions).
    label_key
        ``obs`` column of ``ref_adata`` to transfer.
    use_rep
        ``obsm`` key of the representation to search in.
    k
        Number of reference neighbours per query cell (at most the number of reference cells).
    key_added
        Prefix of the two ``obs`` columns written to ``query_adata``.

    Returns
    -------
    DataFrame indexed like ``query_adata.obs`` with columns ``label_key`` (the transferred label) and
    ``f"{label_key}_uncertainty"``.

    Examples
    --------
    >>> mapped = model.map_query(query)
    >>> scvae.tl.transfer_labels(reference, query, label_key="cell_type")
    """
    from sklearn.neighbors import NearestNeighbors

    if not isinstance(use_rep, str):
        raise InputError(f"use_rep must be an obsm key (a string, e.g. 'X_scvae'), got {use_rep!r}")
    reps = []
    for what, adata in (("ref_adata", ref_adata), ("query_adata", query_adata)):
        if not isinstance(adata, AnnData):
            raise InputError(f"{what} must be an AnnData object, got {type(adata).__name__}")
        if use_rep not in adata.obsm:
            raise InputError(
                f"{what}.obsm has no {use_rep!r} (available: {list(adata.obsm.keys()) or 'none'}); embed the cells "
                "first (scvae.model.fit for the reference, model.map_query for the query) or pass use_rep="
            )
        rep = np.asarray(adata.obsm[use_rep], dtype=np.float64)
        if rep.ndim != 2 or not np.isfinite(rep).all():
            raise InputError(f"{what}.obsm[{use_rep!r}] must be a finite cells × dimensions array")
        reps.append(rep)
    refuse_view(query_adata, "query_adata")
    ref_rep, query_rep = reps
    if ref_rep.shape[1] != query_rep.shape[1]:
        raise InputError(
            f"obsm[{use_rep!r}] has {ref_rep.shape[1]} dimensions in ref_adata but {query_rep.shape[1]} in "
            "query_adata; both must come from the same (mapped) model"
        )
    labels = obs_column(ref_adata, label_key, "label_key", owner="ref_adata")
    check_int("k", k)
    if not isinstance(key_added, str) or not key_added:  # "" would overwrite the query's own obs[label_key]
        raise InputError(f"key_added must be a non-empty string (the prefix of the obs columns), got {key_added!r}")
    if k > ref_adata.n_obs:
        raise InputError(f"k={k} is larger than the number of reference cells ({ref_adata.n_obs}); lower it")

    if isinstance(labels.dtype, pd.CategoricalDtype):
        categories = list(labels.cat.remove_unused_categories().cat.categories)
    else:
        labels = label_text(labels)
        categories = sorted(pd.unique(labels))
    codes = pd.Categorical(labels, categories=categories).codes

    dist, idx = NearestNeighbors(n_neighbors=int(k)).fit(ref_rep).kneighbors(query_rep)
    sigma = dist[:, -1:]
    scaled = np.divide(dist, sigma, out=np.zeros_like(dist), where=sigma > 0)  # all at distance 0: equal votes
    weights = np.exp(-(scaled**2))
    votes = np.zeros((query_adata.n_obs, len(categories)))
    np.add.at(votes, (np.repeat(np.arange(query_adata.n_obs), int(k)), codes[idx].ravel()), weights.ravel())
    share = votes / votes.sum(1, keepdims=True)
    winner = share.argmax(1)
    uncertainty = 1.0 - share[np.arange(len(winner)), winner]

    out = pd.DataFrame(
        {label_key: pd.Categorical.from_codes(winner, categories=categories), f"{label_key}_uncertainty": uncertainty},
        index=query_adata.obs_names.copy(),
    )
    for column in out:
        query_adata.obs[f"{key_added}{column}"] = out[column].values
    logger.info(
        "transferred %r to %d query cells from their %d nearest reference cells; median uncertainty %.3f",
        label_key,
        query_adata.n_obs,
        k,
        float(np.median(uncertainty)),
    )
    return out
