"""Bayesian differential expression on a trained model (scVI's "change" and "vanilla" modes).

For two groups of cells, draw ``n_samples`` cells of each (with replacement, seeded), one z ~ q(z | x) per draw,
and decode the expected frequencies rho (rows sum to 1) of every gene. Pairing the draws of the two groups gives
``n_samples`` draws from the posterior of the log2 fold change of every gene,

    LFC = log2(rho_1 + pseudocount) - log2(rho_2 + pseudocount),

from which the columns of the result are summaries:

- ``mode="change"`` (default): the probability of a change larger than ``delta``, P(|LFC| > delta | data), its
  log Bayes factor, and a posterior false-discovery control: the genes called DE are the largest set, taken in
  order of decreasing probability, whose expected share of false discoveries (mean of 1 - P) is at most ``fdr``.
- ``mode="vanilla"``: P(rho_1 > rho_2 | data) and its log Bayes factor (a gene is DE when |log BF| > 3, odds of
  about 20:1 either way).

With ``batch_correction=True`` each draw is decoded under every category of the model's ``batch_key`` found in
the two groups and rho is averaged over them, so differences between batches do not show up as DE.

Memory is bounded by ``n_samples`` × genes for each group and does not grow with the number of cells: only the
drawn cells' rows are decoded (in chunks of ``batch_size``) and the observed statistics (means, fractions) are
summed in chunks of ``batch_size`` rows of the sparse or dense matrix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .data import (
    InputError,
    as_label_list,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_seed,
    label_text,
    obs_column,
)
from .loaders import to_dense_float
from .module import reparameterize
from .trained import SCVAE, refuse_nonfinite

logger = logging.getLogger(__name__)

MODES = ("change", "vanilla")
_EPS = 1e-8  # keeps Bayes factors of probabilities 0 or 1 finite


def _group_mask(adata: AnnData, groupby: str, group: str | Sequence[str] | None, what: str) -> np.ndarray | None:
    if group is None:
        return None
    labels = label_text(obs_column(adata, groupby, "groupby"))
    wanted = as_label_list(group)
    unknown = [g for g in wanted if g not in set(labels)]
    if unknown:
        raise InputError(
            f"{what}={unknown if len(unknown) > 1 else unknown[0]!r} is not a category of adata.obs[{groupby!r}] "
            f"(categories: {sorted(set(labels))})"
        )
    return labels.isin(wanted).to_numpy()


def _draw_rho(
    model: SCVAE,
    x: Any,
    codes: np.ndarray,
    rows: np.ndarray,
    decode_codes: list[np.ndarray],
    batch_size: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """One z ~ q(z | x) per row of ``rows`` (repeats allowed), decoded to expected frequencies rho and averaged
    over the label codes in ``decode_codes`` (one array of codes per batch category, or the cells' own)."""
    device = model.device
    noise = torch.randn((len(rows), model.module.n_latent), generator=gen, device=device)  # independent of batch_size
    out = torch.empty((len(rows), x.shape[1]))  # filled batch by batch: no list of batches to concatenate
    for start, batch, mean, logvar in model.encoded(x, codes, batch_size, rows):
        r = rows[start : start + batch_size]
        z = reparameterize(mean, logvar, noise[start : start + batch_size])
        rho = torch.zeros(batch.x.shape, device=device)
        for dc in decode_codes:
            rho += model.decoded(z, torch.from_numpy(dc[r]).to(device)).expression()
        out[start : start + len(r)] = (rho / len(decode_codes)).cpu()
    return out


def _observed(x: Any, mask: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Mean counts, fraction of cells with a count and mean counts per 10,000 of each gene over ``mask``."""
    rows = np.flatnonzero(mask)
    total, nonzero, normalized = np.zeros((3, x.shape[1]))
    for start in range(0, len(rows), batch_size):
        xb = to_dense_float(x, rows[start : start + batch_size]).astype(np.float64)
        lib = xb.sum(1, keepdims=True)
        total += xb.sum(0)
        nonzero += (xb > 0).sum(0)
        normalized += (xb / np.where(lib > 0, lib, 1.0) * 1e4).sum(0)
    n = max(len(rows), 1)
    return {"raw_mean": total / n, "non_zeros_proportion": nonzero / n, "raw_normalized_mean": normalized / n}


def _fdr_calls(proba: np.ndarray, fdr: float) -> np.ndarray:
    """The largest set of genes, taken by decreasing posterior probability, whose posterior expected false
    discovery proportion (mean of 1 - P over the set) is at most ``fdr``."""
    order = np.argsort(-proba, kind="stable")
    expected_fdp = np.cumsum(1.0 - proba[order]) / np.arange(1, len(proba) + 1)
    n_de = int(np.flatnonzero(expected_fdp <= fdr).max() + 1) if (expected_fdp <= fdr).any() else 0
    calls = np.zeros(len(proba), dtype=bool)
    calls[order[:n_de]] = True
    return calls


def _summaries(
    rho1: torch.Tensor, rho2: torch.Tensor, *, mode: str, delta: float, pseudocount: float, ci: float, chunk: int
) -> dict[str, np.ndarray]:
    """Per-gene posterior summaries of the paired draws, in gene chunks of ``chunk`` (bounded memory)."""
    n_genes = rho1.shape[1]
    names = ("lfc_mean", "lfc_median", "lfc_std", "lfc_ci_low", "lfc_ci_high", "proba_up", "proba_down", "proba_gt")
    res = {k: np.zeros(n_genes) for k in names}
    q = torch.tensor([0.5, (1 - ci) / 2, (1 + ci) / 2], dtype=torch.float64)
    for g0 in range(0, n_genes, chunk):
        g = slice(g0, g0 + chunk)
        r1, r2 = rho1[:, g].double(), rho2[:, g].double()
        lfc = torch.log2(r1 + pseudocount) - torch.log2(r2 + pseudocount)
        med, lo, hi = torch.quantile(lfc, q, dim=0)
        res["lfc_mean"][g] = lfc.mean(0).numpy()
        res["lfc_std"][g] = lfc.std(0).numpy()
        res["lfc_median"][g], res["lfc_ci_low"][g], res["lfc_ci_high"][g] = med.numpy(), lo.numpy(), hi.numpy()
        if mode == "change":
            res["proba_up"][g] = (lfc > delta).double().mean(0).numpy()
            res["proba_down"][g] = (lfc < -delta).double().mean(0).numpy()
        else:
            res["proba_gt"][g] = (r1 > r2).double().mean(0).numpy()
    return res


@torch.no_grad()
def differential_expression(
    model: SCVAE,
    adata: AnnData,
    *,
    groupby: str,
    group1: str | Sequence[str],
    group2: str | Sequence[str] | None = None,
    mode: str = "change",
    delta: float = 0.25,
    batch_correction: bool = False,
    n_samples: int = 5000,
    pseudocount: float = 1e-6,
    fdr: float = 0.05,
    ci: float = 0.9,
    batch_size: int = 1024,
    gene_chunk: int = 2048,
    seed: int = 0,
) -> pd.DataFrame:
    """Differential expression between two groups of cells, from the model's posterior.

    Parameters
    ----------
    model
        A trained :class:`~scvae.model.SCVAE` with a count likelihood (nb, zinb, poisson).
    adata
        Cells with the model's genes (any order) and labels.
    groupby, group1, group2
        ``adata.obs[groupby]`` defines the groups: ``group1`` (one category or a list) against ``group2``
        (default: all other cells).
    mode
        ``"change"`` (probability of a log2 fold change larger than ``delta``) or ``"vanilla"`` (probability
        that expression is higher in group 1).
    delta
        Smallest |log2 fold change| that counts as a change (``mode="change"``).
    batch_correction
        Decode every draw under each category of the model's ``batch_key`` present in the two groups and
        average, so that batch differences do not count as expression differences.
    n_samples
        Posterior draws per group (cells drawn with replacement, one z each).
    pseudocount
        Added to the expected frequencies (per-cell fraction of counts) before the log: damps the fold changes
        of genes expressed in neither group (1e-6 is 0.01 counts per 10,000).
    fdr
        Target posterior expected false discovery proportion of the ``is_de`` calls (``mode="change"``).
    ci
        Mass of the equal-tailed credible interval of the log2 fold change.
    batch_size, gene_chunk
        Cells decoded at once; genes summarised at once (memory: about 2 × ``n_samples`` × genes floats, plus
        ``n_samples`` × ``gene_chunk`` doubles).
    seed
        Seeds the drawn cells and the posterior samples.

    Returns
    -------
    A DataFrame indexed by gene, sorted by evidence of change (``proba_de`` / ``bayes_factor``, then |lfc_mean|),
    with columns ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_ci_low``, ``lfc_ci_high`` (log2 fold change of
    group 1 over group 2), ``proba_de``, ``proba_not_de``, ``proba_up`` and ``proba_down`` (of LFC > delta and LFC < -delta),
    ``bayes_factor`` (natural log), ``is_de``,
    ``scale1``, ``scale2`` (mean decoded frequency), ``raw_mean1``, ``raw_mean2``, ``non_zeros_proportion1``,
    ``non_zeros_proportion2``, ``raw_normalized_mean1``, ``raw_normalized_mean2`` (observed counts, fraction of
    cells expressing, counts per 10,000), ``n_cells1``, ``n_cells2`` and the settings (``mode``, ``delta``,
    ``group1``, ``group2``). For ``mode="vanilla"``, ``proba_de`` is P(rho_1 > rho_2) and ``proba_not_de``
    its complement.
    """
    if not isinstance(model, SCVAE):
        raise InputError(f"model must be a trained scvae.model.SCVAE, got {type(model).__name__}")
    seed = check_seed(seed)
    check_choice("mode", mode, MODES)
    if not model.module.counts:
        raise InputError(
            f"differential expression needs a count likelihood (nb, zinb, poisson); this model's is {model.likelihood!r}"
        )
    for name, value in (("n_samples", n_samples), ("batch_size", batch_size), ("gene_chunk", gene_chunk)):
        check_int(name, value)
    fdr, ci = (check_number(name, v, low=0.0, high=1.0, strict=True) for name, v in (("fdr", fdr), ("ci", ci)))
    delta, pseudocount = check_number("delta", delta, low=0.0), check_number("pseudocount", pseudocount, low=0.0)
    if group1 is None:
        raise InputError("group1 is None; give the category (or list of categories) of adata.obs[groupby] to test")
    in1 = _group_mask(adata, groupby, group1, "group1")
    in2 = _group_mask(adata, groupby, group2, "group2")
    if in2 is None:
        in2 = ~in1
    if (in1 & in2).any():
        raise InputError("group1 and group2 share categories; give two disjoint groups")
    for mask, what in ((in1, "group1"), (in2, "group2")):
        if not mask.any():
            raise InputError(f"{what} has no cells in adata")

    x, codes = model.read(adata)
    decode = [codes]
    batch_key = model.spec.batch_key
    if check_bool("batch_correction", batch_correction):
        if batch_key is None:
            raise InputError("batch_correction=True needs a model fitted with batch_key")
        j = model.labels.keys.index(batch_key)
        present = np.unique(codes[in1 | in2, j])
        decode = [np.where(np.arange(codes.shape[1]) == j, b, codes).astype(codes.dtype) for b in present]

    rng = np.random.default_rng(seed)
    rows1 = rng.choice(np.flatnonzero(in1), n_samples, replace=True)
    rows2 = rng.choice(np.flatnonzero(in2), n_samples, replace=True)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    rho1 = _draw_rho(model, x, codes, rows1, decode, batch_size, gen)
    rho2 = _draw_rho(model, x, codes, rows2, decode, batch_size, gen)
    refuse_nonfinite(rho1, "expression of group1")
    refuse_nonfinite(rho2, "expression of group2")

    s = _summaries(rho1, rho2, mode=mode, delta=delta, pseudocount=pseudocount, ci=ci, chunk=gene_chunk)
    proba_de = s["proba_up"] + s["proba_down"] if mode == "change" else s["proba_gt"]
    proba_not_de = 1.0 - proba_de
    bayes_factor = np.log(proba_de + _EPS) - np.log(proba_not_de + _EPS)
    is_de = _fdr_calls(proba_de, fdr) if mode == "change" else np.abs(bayes_factor) > 3.0
    obs1, obs2 = _observed(x, in1, batch_size), _observed(x, in2, batch_size)
    df = pd.DataFrame(
        {
            **{k: s[k] for k in ("lfc_mean", "lfc_median", "lfc_std", "lfc_ci_low", "lfc_ci_high")},
            "proba_de": proba_de,
            "proba_not_de": proba_not_de,
            "proba_up": s["proba_up"] if mode == "change" else proba_de,
            "proba_down": s["proba_down"] if mode == "change" else proba_not_de,
            "bayes_factor": bayes_factor,
            "is_de": is_de,
            "scale1": rho1.double().mean(0).numpy(),
            "scale2": rho2.double().mean(0).numpy(),
            **{f"{k}1": v for k, v in obs1.items()},
            **{f"{k}2": v for k, v in obs2.items()},
            "n_cells1": int(in1.sum()),
            "n_cells2": int(in2.sum()),
            "mode": mode,
            "delta": delta if mode == "change" else math.nan,
            "group1": str(group1),
            "group2": "rest" if group2 is None else str(group2),
        },
        index=pd.Index(model.genes, name="gene"),
    )
    order = np.lexsort((-np.abs(df["lfc_mean"].to_numpy()), -df["bayes_factor"].to_numpy()))
    logger.info(
        "differential expression %s vs %s (%s): %d cells vs %d, %d of %d genes called DE",
        group1,
        "rest" if group2 is None else group2,
        mode,
        in1.sum(),
        in2.sum(),
        int(is_de.sum()),
        len(df),
    )
    return df.iloc[order]
