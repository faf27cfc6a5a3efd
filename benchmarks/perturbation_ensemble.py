"""Screen: does averaging the predictions of several independently seeded models beat one model?

    python benchmarks/perturbation_ensemble.py --seeds 0 --members 3

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults), ``--members`` VAEs are trained with seeds ``seed * members + k`` (the first is
the single model of the seed) and each predicts the target with ``method="delta"`` (1,000 cells, as the
benchmark). "ensemble" pools every member's predicted cells, so its mean change is the members' average and its
cells are a mixture of theirs. Scored with ``scvae.tl.evaluate_perturbation`` beside the balanced linear shift.
Writes ``benchmarks/results/perturbation_ensemble.{csv,md}`` (mean over seeds, spread max − min). A screen:
``predict_perturbation`` predicts with one model.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import anndata as ad
import pandas as pd
import torch
from _common import markdown_table
from perturbation_kang import CELL_TYPE, CONDITION, CONTROL, STIMULATED, select_genes

import scvae
from scvae import tl
from scvae.perturbation import linear_shift

OUT = Path(__file__).resolve().parent / "results"
SCORES = ("delta_corr_top_change", "delta_corr_top", "delta_corr", "r2_top_change", "r2_top", "e_distance")
LABELS = dict(condition_key=CONDITION, control=CONTROL, stimulated=STIMULATED, cell_type_key=CELL_TYPE)


def run(adata, target: str, seed: int, n_hvg: int, members: int) -> list[dict]:
    is_target = (adata.obs[CELL_TYPE] == target).to_numpy()
    is_stim = (adata.obs[CONDITION] == STIMULATED).to_numpy()
    train = adata[~(is_target & is_stim)].copy()
    genes = select_genes(train, n_hvg)
    train = train[:, genes].copy()
    real_stim = adata[is_target & is_stim][:, genes].copy()
    real_ctrl = adata[is_target & ~is_stim][:, genes].copy()
    top = tl.rank_de_genes(adata[is_target][:, genes].copy(), CONDITION, STIMULATED, CONTROL, 100)
    n_cells = max(1000, real_ctrl.n_obs)
    preds = []
    for k in range(members):
        s = seed * members + k
        model = scvae.model.fit(train, seed=s, progress_bar=False)
        pred = model.predict_perturbation(train, **LABELS, target=target, n_cells=n_cells, seed=s)
        pred.obs_names = [f"{name}-m{k}" for name in pred.obs_names]
        preds.append(pred)
    scored = {
        "delta (one model)": (preds[0], False),
        f"ensemble of {members}": (ad.concat(preds, merge="same"), False),
        "linear": (linear_shift(train, **LABELS, target=target, seed=seed), True),
    }
    rows = []
    for name, (p, normalized) in scored.items():
        res = tl.evaluate_perturbation(p, real_stim, real_ctrl, top_genes=top, pred_normalized=normalized, seed=seed)
        rows.append({"cell_type": target, "seed": seed, "method": name, **{s: float(res[s]) for s in SCORES}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument(
        "--cell-types", nargs="+", default=["CD4 T", "CD14 Mono", "CD8 T", "B", "CD16 Mono", "NK", "DC"]
    )
    parser.add_argument("--n-hvg", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    adata = scvae.datasets.kang()
    t0, rows = time.perf_counter(), []
    for seed in args.seeds:
        for target in args.cell_types:
            rows += run(adata, target, seed, args.n_hvg, args.members)
            print(pd.DataFrame(rows[-3:]).round(3).to_string(index=False), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out / "perturbation_ensemble.csv", index=False)  # as the runs end
    df = pd.DataFrame(rows)
    methods = list(dict.fromkeys(df["method"]))
    parts = [
        "# Screen: the average of several seeded models' predictions against one model's\n",
        f"`python benchmarks/perturbation_ensemble.py --seeds {' '.join(map(str, args.seeds))} --members "
        f"{args.members} --cell-types "
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
    (args.out / "perturbation_ensemble.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
