"""Benchmark: predict the interferon-β response of a cell type never seen stimulated (Kang et al. 2018 PBMCs).

For every cell type with at least ``--min-cells`` cells in each condition, in turn: hold out its stimulated
cells, train on the rest, predict them from its control cells, and score the prediction against the real
held-out cells with :func:`scvae.tl.evaluate_perturbation` (log-normalised expression of the model's genes).

    python benchmarks/perturbation_kang.py --seeds 0 1 2                 # 2,000 HVGs of the training cells
    python benchmarks/perturbation_kang.py --n-hvg 0 --seeds 0            # all 9,015 genes
    python benchmarks/perturbation_kang.py --cell-types "CD4 T" B --seeds 0 --max-epochs 50
    python benchmarks/perturbation_kang.py --seeds 0 1 2 --methods delta transport scgen --interval 0  # and scGen

Models are trained as a user following the README and ``tutorials/02_perturbation.py`` would: ``fit``'s
defaults (``scvae.model.fit(train, seed=seed)``, and ``condition_key="condition"`` for the cVAE), unless
``--max-epochs`` / ``--lr`` (both models) or ``--vae-args`` / ``--cvae-args`` (JSON keyword arguments for one
of them, e.g. ``--cvae-args '{"adversarial_weight": 0}'``) are given.

Methods
-------
- ``no_change``: the target's control cells taken as the prediction.
- ``linear`` / ``linear_unbalanced``: gene-space shift, mean stimulated − mean control of the other types
  added to the target's log-normalised control cells, balanced per type or over all their cells
  (``scvae.perturbation.linear_shift``).
- ``linear_similar`` (in runs since 2026-12-07): the same shift with the other types weighted by how alike their
  control cells are to the target's (``linear_shift(..., similar=True)``), a stronger gene-space baseline.
- ``delta``: scGen's latent arithmetic on an unconditional VAE.
- ``delta_uncorrected``: ``delta`` with ``correct_bias=False`` (the decoder's error on the target's control cells
  left in the prediction; every other method has it taken off, ``predict_perturbation``'s default), from the
  same model and the same draws, to measure what the correction does.
- ``transport``: the same VAE, a response that depends on the cell's state (``method="transport"``: optimal
  transport pairs control and stimulated codes of each other type; a target cell moves as its nearest paired
  control cells do).
- ``transport_similar``: ``transport`` with ``similar=--similar`` (0.5): that share of the predicted change taken
  from ``linear_similar``'s (``predict_perturbation``'s defaults; every other method passes ``similar=0``).
- ``counterfactual``: a cVAE conditioned on the condition; control cells decoded with the stimulated label.
- ``cvae_delta`` / ``cvae_transport``: the same cVAE, moved by δ or by transport, decoded with the stimulated label;
  ``cvae_transport_similar``: ``cvae_transport`` with ``similar=--similar``.
- ``scgen`` (the anchor, only when asked for with ``--methods``; needs the ``bench`` extra's pertpy): scGen itself, as
  pertpy 1.0.3 implements it (``pertpy.tl.Scgen``, the Theis lab's port of scGen), with its defaults (Gaussian VAE,
  800 hidden units, 100 latent dimensions) on the log-normalised genes (``log1p`` of counts per 10,000, as scGen asks),
  trained as its tutorial does (``max_epochs=100, batch_size=32, early_stopping=True, early_stopping_patience=25``;
  ``--scgen-args`` overrides these, e.g. ``'{"early_stopping": false}'``), predicting with
  ``predict(ctrl_key=..., stim_key=..., celltype_to_predict=target)``: one decoded cell per control cell of the
  target. Seeded through ``scvi.settings.seed``; pertpy draws its balanced cells without a seed, so these runs are
  not bit for bit repeatable.
- ``halves`` (the noise ceiling): two random halves of the real stimulated cells, one scored against the other.

Scores (see ``scvae.tl.evaluate_perturbation`` for their definitions): Pearson-delta over all genes
(``delta_corr``), over the top-100 genes by |real change| (``delta_corr_top_change``, both directions) and over
scGen's top-100 up-regulated Wilcoxon DEGs (``delta_corr_top``); R² of means over both top lists (``r2_top_change``,
``r2_top``) and all genes (``r2_all``); the share of top-changed genes whose predicted change has the right sign
(``sign_top_change``); E-distance as scPerturBench computes it (``e_distance``, lower is better) and the energy
distance (``energy_distance``), in a 50-component PCA of the real cells of the type; gene by gene, the 1-D
Wasserstein distance between predicted and real stimulated cells, averaged over the top-100 |change| genes
(``wasserstein_top_change``, lower is better; files written before 2026-12-07 lack it).

Writes ``benchmarks/results/<out>.csv`` (one row per seed, cell type and method) and ``<out>.md``: one table per
score (mean over seeds, spread max − min in brackets) and, for each method, on how many cell types it beats
every baseline by more than the seed spread of either. Default ``<out>``:
``perturbation_kang`` (2,000 HVGs) or ``perturbation_kang_all_genes`` (``--n-hvg 0``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

import scvae
from scvae import tl
from scvae.perturbation import linear_shift

logger = logging.getLogger("perturbation_kang")

CONDITION, CONTROL, STIMULATED, CELL_TYPE = "condition", "control", "stimulated", "cell_type"
BASELINES = ("no_change", "linear", "linear_unbalanced", "linear_similar")  # linear_similar: since 2026-12-07
MODEL_METHODS = (
    "delta",
    "delta_uncorrected",
    "transport",
    "transport_similar",
    "counterfactual",
    "cvae_delta",
    "cvae_transport",
    "cvae_transport_similar",
)
ANCHORS = ("scgen",)  # other tools, run only when asked for (--methods)
# scGen's tutorial settings (pertpy.tl.Scgen.train)
SCGEN_TRAIN = {"max_epochs": 100, "batch_size": 32, "early_stopping": True, "early_stopping_patience": 25}
# score -> True when higher is better
SCORES = {
    "delta_corr_top_change": True,
    "delta_corr_top": True,
    "delta_corr": True,
    "r2_top_change": True,
    "r2_top": True,
    "r2_all": True,
    "sign_top_change": True,
    "e_distance": False,
    "energy_distance": False,
    "wasserstein_top_change": False,  # not in the files written before 2026-12-07
}
# coverage of the real change by predict_perturbation's intervals (interval=--interval)
INTERVAL_SCORES = (
    "interval_coverage_top_change",
    "interval_coverage_top",
    "interval_coverage",
    "interval_width_top_change",
)
HEADLINE = (
    "delta_corr_top_change",
    "delta_corr_top",
    "r2_top_change",
    "r2_top",
    "delta_corr",
    "e_distance",
    "energy_distance",
    "wasserstein_top_change",
)
RESULTS = Path(__file__).resolve().parent / "results"


def select_genes(train: AnnData, n_hvg: int) -> list[str]:
    """Highly variable genes of the training cells (Seurat flavour on a log-normalised copy); all with 0."""
    if n_hvg <= 0 or n_hvg >= train.n_vars:
        return [str(g) for g in train.var_names]
    tmp = AnnData(X=tl.log_normalize(train), var=pd.DataFrame(index=train.var_names.copy()))
    sc.pp.highly_variable_genes(tmp, n_top_genes=n_hvg)
    return [str(g) for g in tmp.var_names[tmp.var["highly_variable"].to_numpy()]]


def import_pertpy() -> tuple[ModuleType, ModuleType]:
    """pertpy and scvi-tools (for ``scgen``), or an exit that says how to install them."""
    try:
        import pertpy
        import scvi
    except ImportError as err:  # the anchor is optional: the benchmark's own methods need neither
        hint = 'pip install -e ".[bench]" (pertpy 1.0, statsmodels < 0.15)'
        raise SystemExit(f"--methods scgen needs pertpy: {hint}; the import failed with: {err}") from err
    return pertpy, scvi


def scgen_prediction(train: AnnData, target: str, seed: int, train_args: dict) -> tuple[AnnData, float]:
    """scGen (pertpy's ``Scgen``) trained on the log-normalised training cells; its prediction of ``target``'s
    stimulated cells (log-normalised) and the training time in seconds."""
    pt, scvi = import_pertpy()
    data = AnnData(
        X=tl.log_normalize(train),
        obs=train.obs[[CONDITION, CELL_TYPE]].copy(),
        var=pd.DataFrame(index=train.var_names.copy()),
    )
    scvi.settings.seed = seed
    pt.tl.Scgen.setup_anndata(data, batch_key=CONDITION, labels_key=CELL_TYPE)
    model = pt.tl.Scgen(data)
    t0 = time.perf_counter()
    model.train(**{**SCGEN_TRAIN, "enable_progress_bar": False, **train_args})
    seconds = time.perf_counter() - t0
    pred, _ = model.predict(ctrl_key=CONTROL, stim_key=STIMULATED, celltype_to_predict=target)
    return AnnData(
        X=np.asarray(pred.X, dtype=np.float32),
        obs=pred.obs[[CONDITION, CELL_TYPE]].copy(),
        var=pd.DataFrame(index=train.var_names.copy()),
    ), seconds


def chosen_methods(args: argparse.Namespace) -> list[str]:
    """The methods a run reports, in table order: the baselines, then the ones asked for."""
    return [*BASELINES, *[m for m in (*MODEL_METHODS, *ANCHORS) if m in args.methods]]


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
    top = tl.rank_de_genes(both, CONDITION, STIMULATED, CONTROL, n=args.n_top)  # scGen's list: up, Wilcoxon
    labels = dict(
        condition_key=CONDITION, control=CONTROL, stimulated=STIMULATED, cell_type_key=CELL_TYPE, target=target
    )
    n_cells = max(args.n_cells, real_ctrl.n_obs) if args.n_cells else real_ctrl.n_obs  # 0: one per control cell
    fit_kw = dict(seed=seed, progress_bar=False)
    if args.max_epochs:
        fit_kw["max_epochs"] = args.max_epochs
    if args.lr:
        fit_kw["lr"] = args.lr
    preds: dict[str, tuple[AnnData, bool, float]] = {"no_change": (real_ctrl, False, 0.0)}
    preds["linear"] = (linear_shift(train, **labels, seed=seed), True, 0.0)
    preds["linear_unbalanced"] = (linear_shift(train, **labels, balanced=False, seed=seed), True, 0.0)
    preds["linear_similar"] = (linear_shift(train, **labels, similar=True, seed=seed), True, 0.0)
    wanted = set(args.methods)
    plans = (
        (
            "vae",
            {},
            args.vae_args,
            (
                ("delta", "delta"),
                ("delta_uncorrected", "delta"),
                ("transport", "transport"),
                ("transport_similar", "transport"),
            ),
        ),
        (
            "cvae",
            {"condition_key": CONDITION},
            args.cvae_args,
            (
                ("counterfactual", "counterfactual"),
                ("cvae_delta", "delta"),
                ("cvae_transport", "transport"),
                ("cvae_transport_similar", "transport"),
            ),
        ),
    )
    for _, model_kw, extra, methods in plans:
        if not {n for n, _ in methods} & wanted:
            continue
        t0 = time.perf_counter()
        model = scvae.model.fit(train, **model_kw, **fit_kw, **extra)
        seconds = time.perf_counter() - t0
        for name, method in methods:
            if name in wanted:
                pred = model.predict_perturbation(
                    train,
                    **labels,
                    method=method,
                    n_cells=n_cells,
                    interval=args.interval or None,
                    correct_bias=not name.endswith("_uncorrected"),
                    similar=args.similar if name.endswith("_similar") else 0.0,
                    seed=seed,
                    **({"cells": args.cells} if args.cells else {}),
                )
                preds[name] = (pred, False, seconds)

    if "scgen" in wanted:
        pred, seconds = scgen_prediction(train, target, seed, args.scgen_args)
        preds["scgen"] = (pred, True, seconds)  # log-normalised already

    perm = np.random.default_rng(seed).permutation(real_stim.n_obs)
    half = real_stim.n_obs // 2
    halves = (real_stim[np.sort(perm[:half])], real_stim[np.sort(perm[half:])])

    base = dict(
        seed=seed, cell_type=target, n_control=real_ctrl.n_obs, n_stimulated=real_stim.n_obs, n_genes=len(genes)
    )
    rows = []
    for method, (pred, normalized, seconds) in preds.items():
        res = tl.evaluate_perturbation(pred, real_stim, real_ctrl, top_genes=top, pred_normalized=normalized, seed=seed)
        intervals = {k: res.get(k, np.nan) for k in INTERVAL_SCORES}
        rows.append({**base, "method": method, **{k: res[k] for k in SCORES}, **intervals, "fit_seconds": seconds})
    res = tl.evaluate_perturbation(halves[0], halves[1], real_ctrl, top_genes=top, seed=seed)
    rows.append({**base, "method": "halves", **{k: res[k] for k in SCORES}, "fit_seconds": 0.0})
    for r in rows:
        logger.info(
            "%-10s seed %d %-18s Pearson-delta top-|change| %.3f, top-up %.3f; E-distance %.2f",
            target,
            seed,
            r["method"],
            r["delta_corr_top_change"],
            r["delta_corr_top"],
            r["e_distance"],
        )
    return rows


def mean_and_spread(results: pd.DataFrame, score: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cell types × methods: the mean of ``score`` over seeds, and its spread (max − min)."""
    g = results.groupby(["cell_type", "method"], sort=False)[score]
    return g.mean().unstack("method"), (g.max() - g.min()).unstack("method")


def score_table(results: pd.DataFrame, score: str, methods: list[str]) -> pd.DataFrame:
    """Cell types × methods: mean over seeds with the spread (max − min) in brackets."""
    mean, spread = mean_and_spread(results, score)
    cols = [m for m in [*methods, "halves"] if m in mean]
    out = pd.DataFrame(index=mean.index)
    for m in cols:
        out[m] = [f"{a:.3f} ({b:.3f})" if np.isfinite(a) else "–" for a, b in zip(mean[m], spread[m])]
    means = mean[cols].mean()
    out.loc["mean over types"] = [f"{means[m]:.3f}" for m in cols]
    return out


def wins(results: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per method and headline score: cell types where the method beats the best of no change and both linear
    shifts by more than the seed spread of either (``higher`` scores; for distances, lower)."""
    rows = []
    for method in methods:
        if method in BASELINES:
            continue
        row = {"method": method}
        for score in (s for s in HEADLINE if s in results):
            higher = SCORES[score]
            mean, spread = mean_and_spread(results, score)
            if method not in mean:
                continue
            sign = 1.0 if higher else -1.0
            base = [b for b in BASELINES if b in mean]
            best = (sign * mean[base]).max(axis=1)
            best_name = (sign * mean[base]).idxmax(axis=1)
            best_spread = np.array([spread.loc[t, b] for t, b in best_name.items()])
            margin = sign * mean[method] - best
            beyond = margin > np.maximum(spread[method].to_numpy(), best_spread)
            above = margin > 0
            row[score] = f"{int(beyond.sum())} / {int(above.sum())} of {len(mean)}"
        rows.append(row)
    return pd.DataFrame(rows)


def against_anchor(results: pd.DataFrame, methods: list[str], anchor: str = "scgen") -> pd.DataFrame:
    """Per method and headline score, against ``anchor``: the runs (same seed and cell type) where the method is
    better, the mean margin (positive: better), and the cell types where its mean is better by more than the seed
    spread of either."""
    scores = {
        s: (
            1.0 if SCORES[s] else -1.0,
            results.pivot_table(index=["seed", "cell_type"], columns="method", values=s),
            *mean_and_spread(results, s),
        )
        for s in HEADLINE
        if s in results
    }
    rows = []
    for method in (m for m in methods if m not in (*BASELINES, anchor)):
        row = {"method": method}
        for score, (sign, runs, mean, spread) in scores.items():
            margin = sign * (runs[method] - runs[anchor])
            lead = sign * (mean[method] - mean[anchor])
            beyond = lead > np.maximum(spread[method], spread[anchor])
            row[score] = f"{int((margin > 0).sum())} of {len(margin)} ({margin.mean():+.3f})"
            if results["seed"].nunique() > 1:  # with one seed there is no spread to exceed
                row[score] += f"; {int(beyond.sum())} of {len(mean)}"
        rows.append(row)
    return pd.DataFrame(rows)


def closest_to_ceiling(results: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per cell type, the method with the smallest mean E-distance and energy distance (halves excluded)."""
    out = {}
    for score in (s for s in ("e_distance", "energy_distance", "wasserstein_top_change") if s in results):
        mean = results.groupby(["cell_type", "method"], sort=False)[score].mean().unstack("method")
        out[f"lowest {score}"] = mean[[m for m in methods if m in mean]].idxmin(axis=1)
        out[f"halves {score}"] = mean["halves"].map(lambda v: f"{v:.3f}")
    return pd.DataFrame(out)


def markdown(tab: pd.DataFrame, index: bool = True) -> str:
    head = ([tab.index.name or ""] if index else []) + [str(c) for c in tab.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in zip(tab.index, tab.to_numpy(object)):
        cells = ([str(i)] if index else []) + [str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: pd.DataFrame, methods: list[str], command: str, wall: float, settings: dict) -> str:
    genes = int(results["n_genes"].iloc[0])
    seeds = sorted(int(v) for v in results["seed"].unique())
    md = [
        "# Perturbation prediction on Kang et al. 2018 (IFN-β), one held-out cell type at a time",
        "",
        f"`python benchmarks/perturbation_kang.py {command}` (scvae {scvae.__version__}; 2-core CPU"
        f"{'' if not np.isfinite(wall) else f'; wall time {wall:.0f} s'}). Genes: {genes} ({'all' if settings['n_hvg'] <= 0 else 'HVGs of the training cells'}); "
        f"seeds {seeds}; cell types with at least {settings['min_cells']} cells per condition. Models trained with "
        f"fit's defaults{'' if not (settings['max_epochs'] or settings['lr']) else ' except ' + str({k: settings[k] for k in ('max_epochs', 'lr') if settings[k]})}. "
        "Each cell: mean over seeds (spread, max − min). 'halves': two halves of the real stimulated cells, the "
        "noise ceiling. Definitions: `scvae.tl.evaluate_perturbation`.",
        "",
    ]
    return "\n".join(md + tables(results, methods, settings["interval"]))


def tables(results: pd.DataFrame, methods: list[str], interval: float) -> list[str]:
    """The report's sections (markdown lines): wins over the baselines, closest to the ceiling, the intervals'
    coverage (when the results have it, at level ``interval``) and one table per score."""
    md = [
        "## Wins over the baselines",
        "",
        "Cell types where the method beats the best of the baselines (no change, the balanced and the unbalanced "
        "linear shift, and in runs since 2026-12-07 the shift weighted by similar types, `linear_similar`) by more "
        "than the seed spread of either / by any margin (distances: lower is better).",
        "",
        markdown(wins(results, methods), index=False),
        "",
        "## Closest to the ceiling on the distances",
        "",
        markdown(closest_to_ceiling(results, methods)),
        "",
    ]
    for anchor in (a for a in ANCHORS if a in methods):
        md += [
            f"## Against {anchor}, run by run",
            "",
            f"Runs (same seed and cell type) where the method is better than {anchor} (mean margin, positive: better); "
            "then, with more than one seed, the cell types where its mean is better by more than the seed spread of "
            "either.",
            "",
            markdown(against_anchor(results, methods, anchor), index=False),
            "",
        ]
    model_methods = [m for m in methods if m not in BASELINES]
    if "interval_coverage_top_change" in results and results["interval_coverage_top_change"].notna().any():
        cov = results.groupby(["cell_type", "method"], sort=False)["interval_coverage_top_change"].mean()
        cov = cov.unstack("method")[[m for m in model_methods if m in cov.index.get_level_values(1)]]
        inside = ((cov >= 0.85) & (cov <= 0.95)).sum()
        md += [
            f"## Intervals: coverage of the real change (interval level {interval})",
            "",
            "`predict_perturbation(..., interval=...)`: the share of genes whose real change (real stimulated − "
            "control mean) lies within the predicted interval, over the top-100 genes by |real change| "
            "(`interval_coverage_top_change`), scGen's top-100 up-regulated DEGs (`interval_coverage_top`) and all "
            "genes (`interval_coverage`); `interval_width_top_change`: median width over the top-changed genes. "
            "Cell types whose top-change coverage lies within 0.85–0.95: "
            + ", ".join(f"{m} {int(inside[m])} of {len(cov)}" for m in cov.columns)
            + ".",
            "",
        ]
        for score in INTERVAL_SCORES:
            md += [f"### {score}", "", markdown(score_table(results, score, model_methods)), ""]
    for score, higher in ((s, h) for s, h in SCORES.items() if s in results):
        md += [
            f"## {score} ({'higher' if higher else 'lower'} is better)",
            "",
            markdown(score_table(results, score, methods)),
            "",
        ]
    return md


def parser(doc: str = __doc__) -> argparse.ArgumentParser:
    """The command line of this benchmark (``doc``: the script's docstring, for the description); scripts that run
    :func:`run_split` on other cells build on it."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cell-types",
        nargs="+",
        default=None,
        help="cell types to hold out (default: every type with at least --min-cells cells per condition)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--max-epochs", type=int, default=None, help="default: fit's")
    p.add_argument("--lr", type=float, default=None, help="default: fit's")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(MODEL_METHODS),
        choices=(*MODEL_METHODS, *ANCHORS),
        help="model methods (the baselines always run); scgen: the anchor, with pertpy installed",
    )
    p.add_argument("--similar", type=float, default=0.5, help="transport_similar: predict_perturbation's similar")
    p.add_argument("--n-hvg", type=int, default=2000, help="highly variable genes of the training cells; 0: all")
    p.add_argument("--n-top", type=int, default=100, help="number of top genes scored")
    p.add_argument("--min-cells", type=int, default=10, help="fewest cells per condition for a type to be scored")
    p.add_argument(
        "--n-cells",
        type=int,
        default=1000,
        help="predicted cells per held-out type, at least one per control cell (0: one per control cell)",
    )
    p.add_argument("--interval", type=float, default=0.9, help="level of predict_perturbation's intervals (0: none)")
    p.add_argument(
        "--cells",
        choices=("observed", "decoded"),
        default=None,
        help="predict_perturbation's cells: what its X and layers['expression'] hold (default: its own)",
    )
    p.add_argument("--vae-args", type=json.loads, default={}, help="extra keyword arguments for the VAE's fit")
    p.add_argument("--cvae-args", type=json.loads, default={}, help="extra keyword arguments for the cVAE's fit")
    p.add_argument(
        "--scgen-args", type=json.loads, default={}, help="scgen: keyword arguments for its train, over its tutorial's"
    )
    p.add_argument("--out", type=Path, default=None, help="output path without suffix")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite <out>.md from <out>.csv (e.g. of a run "
        "stopped early); give the run's other arguments as they were",
    )
    return p


def run_splits(
    adata: AnnData, cell_types: list[str], args: argparse.Namespace, out: Path
) -> tuple[pd.DataFrame, float]:
    """:func:`run_split` for every seed and cell type, ``<out>.csv`` rewritten as each ends; the results and the wall
    time in seconds."""
    if "scgen" in args.methods:
        import_pertpy()  # before any training: a missing anchor should not cost a split
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        for target in cell_types:
            rows.extend(run_split(adata, target, args, seed))
            pd.DataFrame(rows).to_csv(out.with_suffix(".csv"), index=False, float_format="%.4f")
    return pd.DataFrame(rows), time.perf_counter() - start


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = parser()
    args = p.parse_args(argv)
    out = args.out or RESULTS / ("perturbation_kang" if args.n_hvg > 0 else "perturbation_kang_all_genes")
    methods = chosen_methods(args)
    command = shlex.join(sys.argv[1:] if argv is None else argv).replace(" --report-only", "")
    if args.report_only:
        results = pd.read_csv(out.with_suffix(".csv"))
        out.with_suffix(".md").write_text(report(results, methods, command, float("nan"), vars(args)))
        return results

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for name in ("scvae", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    adata = scvae.datasets.kang()
    counts = adata.obs.groupby([CELL_TYPE, CONDITION], observed=True).size().unstack(fill_value=0)
    enough = counts[(counts[CONTROL] >= args.min_cells) & (counts[STIMULATED] >= args.min_cells)]
    cell_types = args.cell_types or enough.sort_values(CONTROL, ascending=False).index.astype(str).tolist()
    unknown = sorted(set(cell_types) - set(adata.obs[CELL_TYPE].astype(str)))
    if unknown:
        p.error(f"unknown cell types {unknown}; Kang has {sorted(adata.obs[CELL_TYPE].astype(str).unique())}")

    results, wall = run_splits(adata, cell_types, args, out)  # run_splits has written the csv
    text = report(results, methods, command, wall, vars(args))
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"\nwrote {out.with_suffix('.csv')} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
