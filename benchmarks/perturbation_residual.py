"""Screen: does adding the model's average error on the other cell types improve a perturbation prediction?

    python benchmarks/perturbation_residual.py --seeds 0 1 2
    python benchmarks/perturbation_residual.py --base cvae_transport --seeds 0    # the same on the cVAE's transport

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults), ``predict_perturbation(method="delta")`` predicts it; then every other type t
with at least 10 cells per condition is predicted from the rest in turn (the same model, δ from the types other
than t and the target), and its residual is the real mean change of t minus the predicted one, gene by gene
(log-normalised means, as ``var["change"]``). The corrected prediction adds the mean, the median or the
cell-weighted mean of those residuals to every predicted cell's ``layers["expression"]``: a systematic error of
the decoding path, measured where both conditions are observed, taken off the target's prediction. The
residuals are in-sample for the model (it was trained on those types' stimulated cells), so they measure its
systematic error, not the whole of its out-of-sample error. Nothing of the target's stimulated cells is used.

Scored with ``scvae.tl.evaluate_perturbation`` against the real held-out cells, beside the balanced linear shift.
``--base cvae_transport`` corrects the cVAE's ``method="transport"`` prediction instead (a cVAE conditioned on
the condition, as ``perturbation_kang.py``'s ``cvae_transport``). Writes
``benchmarks/results/perturbation_residual[_cvae_transport].{csv,md}`` (mean over seeds, spread max − min). A screen:
``predict_perturbation`` does not do this.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import markdown_table
from perturbation_kang import CELL_TYPE, CONDITION, CONTROL, STIMULATED, select_genes

import scvae
from scvae import tl
from scvae.conditions import expression_moments, type_groups
from scvae.latent import model_matrix
from scvae.perturbation import linear_shift

OUT = Path(__file__).resolve().parent / "results"
SCORES = ("delta_corr_top_change", "delta_corr_top", "delta_corr", "r2_top_change", "r2_top", "e_distance")
LABELS = dict(condition_key=CONDITION, control=CONTROL, stimulated=STIMULATED, cell_type_key=CELL_TYPE)


BASES = {  # name: fit's extra arguments, predict_perturbation's method
    "delta": ({}, "delta"),
    "cvae_transport": ({"condition_key": CONDITION}, "transport"),
}


def run(adata, target: str, seed: int, n_hvg: int, base: str = "delta") -> list[dict]:
    fit_kw, method = BASES[base]
    is_target = (adata.obs[CELL_TYPE] == target).to_numpy()
    is_stim = (adata.obs[CONDITION] == STIMULATED).to_numpy()
    train = adata[~(is_target & is_stim)].copy()
    genes = select_genes(train, n_hvg)
    train = train[:, genes].copy()
    real_stim = adata[is_target & is_stim][:, genes].copy()
    real_ctrl = adata[is_target & ~is_stim][:, genes].copy()
    top = tl.rank_de_genes(adata[is_target][:, genes].copy(), CONDITION, STIMULATED, CONTROL, 100)
    model = scvae.model.fit(train, seed=seed, progress_bar=False, **fit_kw)
    n_cells = max(1000, real_ctrl.n_obs)
    pred = model.predict_perturbation(train, **LABELS, target=target, method=method, n_cells=n_cells, seed=seed)
    cond = train.obs[CONDITION].astype(str).to_numpy()
    types = train.obs[CELL_TYPE].astype(str).to_numpy()
    groups = type_groups(cond, types, control=CONTROL, stimulated=STIMULATED, exclude=[target], min_cells=10)
    x = model_matrix(model, train)
    rest = train[types != target].copy()
    residuals, sizes = [], []
    for t, (ctrl, stim) in groups.items():
        real = expression_moments(x, stim, counts=True)[0] - expression_moments(x, ctrl, counts=True)[0]
        p = model.predict_perturbation(rest, **LABELS, target=t, method=method, n_cells=None, seed=seed)
        residuals.append(real - p.var["change"].to_numpy())
        sizes.append(min(len(ctrl), len(stim)))
    residuals, w = np.array(residuals), np.array(sizes, dtype=float)
    corrections = {
        "mean": residuals.mean(0),
        "median": np.median(residuals, 0),
        "weighted_mean": (residuals * w[:, None]).sum(0) / w.sum(),
    }
    preds = {base: (pred, False), "linear": (linear_shift(train, **LABELS, target=target, seed=seed), True)}
    for name, r in corrections.items():
        corrected = pred.copy()
        corrected.layers["expression"] = (pred.layers["expression"] + r[None, :]).astype(np.float32)
        preds[f"{base} + {name} residual"] = (corrected, False)
    rows = []
    for name, (p, normalized) in preds.items():
        res = tl.evaluate_perturbation(p, real_stim, real_ctrl, top_genes=top, pred_normalized=normalized, seed=seed)
        rows.append({"cell_type": target, "seed": seed, "method": name, **{s: float(res[s]) for s in SCORES}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--cell-types", nargs="+", default=["CD4 T", "CD14 Mono", "CD8 T", "B", "CD16 Mono", "NK", "DC"]
    )
    parser.add_argument("--n-hvg", type=int, default=2000)
    parser.add_argument("--base", choices=list(BASES), default="delta", help="the prediction corrected")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    name = "perturbation_residual" if args.base == "delta" else f"perturbation_residual_{args.base}"
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    adata = scvae.datasets.kang()
    t0, rows = time.perf_counter(), []
    for seed in args.seeds:
        for target in args.cell_types:
            rows += run(adata, target, seed, args.n_hvg, args.base)
            print(pd.DataFrame(rows[-5:]).round(3).to_string(index=False), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out / f"{name}.csv", index=False)  # as the runs end
    df = pd.DataFrame(rows)
    methods = list(dict.fromkeys(df["method"]))
    parts = [
        "# Screen: the model's residual on the other cell types added to its prediction\n",
        f"`python benchmarks/perturbation_residual.py --base {args.base} --seeds {' '.join(map(str, args.seeds))} --cell-types "
        + " ".join(f'"{t}"' for t in args.cell_types)
        + f" --n-hvg {args.n_hvg}` ({time.perf_counter() - t0:.0f} s, 2-core CPU). What each row is: the "
        "script's docstring. Each cell: mean over seeds (max − min).\n",
    ]
    for score in SCORES:
        g = df.groupby(["cell_type", "method"])[score]
        cell = (g.mean().map("{:.3f}".format) + " (" + (g.max() - g.min()).map("{:.3f}".format) + ")").unstack()
        cell = cell.loc[args.cell_types, methods]
        means = df.groupby("method")[score].mean()
        cell.loc["mean over types"] = [f"{means[m]:.3f}" for m in methods]
        better = "lower" if score == "e_distance" else "higher"
        parts.append(
            f"## {score} ({better} is better)\n\n" + markdown_table(cell.rename_axis("cell_type").reset_index()) + "\n"
        )
    (args.out / f"{name}.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
