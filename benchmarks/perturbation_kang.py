"""Benchmark: predict the interferon-β response of a cell type never seen stimulated (Kang et al. 2018 PBMCs).

For every cell type in turn: hold out its stimulated cells, train on the rest, predict them from its control
cells, and compare with the real held-out cells (scGen's protocol). Scores, on log-normalised expression of the
model's genes (see ``scvae.tl``): R² = squared Pearson correlation of per-gene means over all genes and over
the top-100 DEGs (Wilcoxon, real stimulated vs control cells of that type, up-regulated as in scGen).

Methods
-------
- ``no_change``: the target's control cells taken as the prediction.
- ``linear``: gene-space shift, balanced mean stimulated − mean control of the other types added to the
  target's log-normalised control cells (``scvae.perturbation.linear_shift``).
- ``delta``: scGen's latent arithmetic on an unconditional VAE.
- ``counterfactual``: a cVAE conditioned on the condition; control cells decoded with the stimulated label.
- ``cvae_delta``: the same cVAE, latent δ added and decoded with the stimulated label (no extra training).
- ``halves`` (reference): two random halves of the real stimulated cells compared with each other.

Genes: the ``--n-hvg`` highly variable genes of the *training* cells of each split (no information from the
held-out cells), or all genes with ``--n-hvg 0``.

    python benchmarks/perturbation_kang.py                          # all 9 cell types, seed 0
    python benchmarks/perturbation_kang.py --cell-types "CD4 T" B --epochs 50 --seeds 0 1

Writes ``benchmarks/results/perturbation_kang.csv`` (one row per seed, cell type and method) and
``perturbation_kang.md`` (the table, means over seeds); prints the table.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

import scvae
from scvae import tl
from scvae.perturbation import linear_shift

logger = logging.getLogger("perturbation_kang")

CONDITION, CONTROL, STIMULATED, CELL_TYPE = "condition", "control", "stimulated", "cell_type"
MODEL_METHODS = ("delta", "counterfactual", "cvae_delta")
ALL_METHODS = ("no_change", "linear", *MODEL_METHODS)
RESULTS = Path(__file__).resolve().parent / "results"


def select_genes(train: AnnData, n_hvg: int) -> list[str]:
    """Highly variable genes of the training cells (Seurat flavour on a log-normalised copy)."""
    if n_hvg <= 0 or n_hvg >= train.n_vars:
        return [str(g) for g in train.var_names]
    tmp = AnnData(X=tl.log_normalize(train), var=pd.DataFrame(index=train.var_names.copy()))
    sc.pp.highly_variable_genes(tmp, n_top_genes=n_hvg)
    return [str(g) for g in tmp.var_names[tmp.var["highly_variable"].to_numpy()]]


def halves_score(real_stim: AnnData, real_ctrl: AnnData, top: list[str], seed: int) -> dict[str, float]:
    """Two random halves of the real stimulated cells scored against each other (the noise ceiling)."""
    perm = np.random.default_rng(seed).permutation(real_stim.n_obs)
    half = real_stim.n_obs // 2
    if half < 1:
        return {"r2_all": np.nan, "r2_top": np.nan, "delta_corr": np.nan, "delta_corr_top": np.nan}
    a, b = real_stim[np.sort(perm[:half])], real_stim[np.sort(perm[half:])]
    return tl.evaluate_perturbation(a, b, real_ctrl, top_genes=top)


def run_split(adata: AnnData, target: str, args: argparse.Namespace, seed: int) -> list[dict]:
    """Hold out the stimulated cells of ``target``, train, predict and score every method."""
    is_target = (adata.obs[CELL_TYPE] == target).to_numpy()
    is_stim = (adata.obs[CONDITION] == STIMULATED).to_numpy()
    train = adata[~(is_target & is_stim)].copy()
    genes = select_genes(train, args.n_hvg)
    train = train[:, genes].copy()
    real_stim = adata[is_target & is_stim][:, genes].copy()
    real_ctrl = adata[is_target & ~is_stim][:, genes].copy()
    both = adata[is_target][:, genes].copy()
    top = tl.rank_de_genes(both, CONDITION, STIMULATED, CONTROL, args.n_top)
    labels = dict(
        condition_key=CONDITION, control=CONTROL, stimulated=STIMULATED, cell_type_key=CELL_TYPE, target=target
    )
    balance = dict(n_per_type=args.n_per_type, min_cells=args.min_cells, seed=seed)
    n_cells = max(args.n_cells, real_ctrl.n_obs) if args.n_cells else None
    fit_kw = dict(
        likelihood=args.likelihood, n_latent=args.n_latent, n_hidden=args.n_hidden, n_layers=args.n_layers,
        beta=args.beta, max_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
        progress_bar=False,
    )
    preds: dict[str, tuple[AnnData, bool, float]] = {"no_change": (real_ctrl, False, 0.0)}
    if "linear" in args.methods:
        preds["linear"] = (linear_shift(train, **labels, **balance), True, 0.0)
    if "delta" in args.methods:
        t0 = time.perf_counter()
        vae = scvae.model.fit(train, **fit_kw)
        preds["delta"] = (
            vae.predict_perturbation(train, **labels, method="delta", n_cells=n_cells, **balance), False,
            time.perf_counter() - t0,
        )
    if {"counterfactual", "cvae_delta"} & set(args.methods):
        t0 = time.perf_counter()
        cvae = scvae.model.fit(train, condition_key=CONDITION, encode_covariates=args.encode_covariates, **fit_kw)
        seconds = time.perf_counter() - t0
        if "counterfactual" in args.methods:
            preds["counterfactual"] = (
                cvae.predict_perturbation(train, **labels, method="counterfactual", n_cells=n_cells, seed=seed),
                False, seconds,
            )
        if "cvae_delta" in args.methods:
            preds["cvae_delta"] = (
                cvae.predict_perturbation(train, **labels, method="delta", n_cells=n_cells, **balance), False, 0.0
            )

    rows = []
    base = dict(seed=seed, cell_type=target, n_control=real_ctrl.n_obs, n_stimulated=real_stim.n_obs, n_genes=len(genes))
    scored = {m: tl.evaluate_perturbation(p, real_stim, real_ctrl, top_genes=top, pred_normalized=norm)
              for m, (p, norm, _) in preds.items()}
    scored["halves"] = halves_score(real_stim, real_ctrl, top, seed)
    for method, res in scored.items():
        rows.append({
            **base, "method": method, "r2_all": res["r2_all"], "r2_top": res["r2_top"],
            "delta_corr": res["delta_corr"], "delta_corr_top": res["delta_corr_top"],
            "fit_seconds": preds[method][2] if method in preds else 0.0,
        })
        logger.info("%-10s seed %d %-15s R² all %.3f  top-%d %.3f", target, seed, method, res["r2_all"],
                    len(top), res["r2_top"])
    return rows


def table(results: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per cell type: R² all / top-N for each method (means over seeds), cell counts and whether the model
    methods beat both baselines on top-DEG R²."""
    mean = results.groupby(["cell_type", "method"], sort=False)[["r2_all", "r2_top"]].mean().unstack("method")
    counts = results.groupby("cell_type", sort=False)[["n_control", "n_stimulated"]].first()
    out = counts.copy()
    for m in [*methods, "halves"]:
        if m in mean["r2_all"]:
            out[f"{m} all"] = mean["r2_all"][m]
            out[f"{m} top"] = mean["r2_top"][m]
    baseline = np.fmax(out.get("no_change top", -np.inf), out.get("linear top", -np.inf))
    for m in MODEL_METHODS:
        if f"{m} top" in out:
            out[f"{m} beats baselines"] = out[f"{m} top"] > baseline
    return out


def summary(tab: pd.DataFrame, min_cells: int) -> list[str]:
    """Which model methods beat both baselines on top-DEG R², over the cell types with enough cells to score."""
    enough = (tab["n_control"] >= min_cells) & (tab["n_stimulated"] >= min_cells)
    lines = []
    if (~enough).any():
        lines.append(
            f"Cell types with fewer than {min_cells} cells in a condition ({', '.join(tab.index[~enough])}): their "
            "top DEGs and means rest on a handful of cells, so their scores are mostly noise (see 'halves')."
        )
    for m in MODEL_METHODS:
        col = f"{m} beats baselines"
        if col in tab:
            wins = tab.loc[enough, col]
            lines.append(f"- {m}: above both baselines (top-DEG R²) for {int(wins.sum())} of {len(wins)} cell types "
                         f"with at least {min_cells} cells per condition" + (
                             f"; not for {', '.join(wins.index[~wins.to_numpy(bool)])}" if not wins.all() else ""))
    return lines


def markdown(tab: pd.DataFrame) -> str:
    """A pipe table (floats to 3 decimals), without needing ``tabulate``."""

    def cell(v: object) -> str:
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return "–" if np.isnan(v) else f"{v:.3f}"
        return str(v)

    head = [tab.index.name or "", *map(str, tab.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(i), *(cell(v) for v in row)]) + " |" for i, row in zip(tab.index, tab.to_numpy(object))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell-types", nargs="+", default=None, help="cell types to hold out (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    p.add_argument("--n-hvg", type=int, default=2000, help="highly variable genes of the training cells; 0: all")
    p.add_argument("--n-top", type=int, default=100, help="number of top DEGs scored")
    p.add_argument("--likelihood", default="nb")
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--n-hidden", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=1)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--encode-covariates", type=int, default=1, choices=(0, 1), help="cVAE: labels to the encoder")
    p.add_argument("--n-per-type", type=int, default=None, help="balanced δ: cells per type and condition")
    p.add_argument("--min-cells", type=int, default=10, help="balanced δ: fewest cells per condition to use a type")
    p.add_argument(
        "--n-cells", type=int, default=1000,
        help="predicted cells per held-out type, at least one per control cell (0: one per control cell). More "
        "draws from the model lower the sampling noise of the predicted means; the baselines cannot do that",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=RESULTS / "perturbation_kang", help="output path without suffix")
    args = p.parse_args(argv)
    args.encode_covariates = bool(args.encode_covariates)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    adata = scvae.datasets.kang()
    cell_types = args.cell_types or adata.obs[CELL_TYPE].value_counts().index.astype(str).tolist()
    unknown = sorted(set(cell_types) - set(adata.obs[CELL_TYPE].astype(str)))
    if unknown:
        p.error(f"unknown cell types {unknown}; Kang has {sorted(adata.obs[CELL_TYPE].astype(str).unique())}")

    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        for target in cell_types:
            rows.extend(run_split(adata, target, args, seed))
    results = pd.DataFrame(rows)
    wall = time.perf_counter() - start

    methods = [m for m in ALL_METHODS if m in args.methods or m == "no_change"]
    tab = table(results, methods)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.4f")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "cell_types")}
    md = [
        "# Perturbation prediction on Kang et al. 2018 (IFN-β), one held-out cell type at a time",
        "",
        f"R² = squared Pearson correlation of per-gene mean log-normalised expression, predicted vs real held-out "
        f"stimulated cells; 'all' over the {results['n_genes'].iloc[0]} genes of the model (HVGs of the training "
        f"cells when n_hvg > 0), 'top' over the top-{args.n_top} DEGs (Wilcoxon, up in stimulated) of the real "
        "cells of that type. Means over seeds. 'halves': two halves of the real stimulated cells (the ceiling).",
        "",
        f"Settings: {settings}; wall time {wall:.0f} s.",
        "",
        markdown(tab),
        "",
        *summary(tab, args.min_cells),
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print(markdown(tab))
    print("\n".join(summary(tab, args.min_cells)))
    print(f"\nwall time {wall:.0f} s; wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
