"""Latent-space quality on the bundled real data: scvae vs PCA of log-normalised counts.

    python benchmarks/latent_quality.py [--seeds 0 1 2] [--max-epochs N]

- Cell-type separation: leave-one-out k-NN (k=15) accuracy of the labels, on PBMC 68k (10 types), Kang
  control cells (9 types) and CellBench singlets (5 lines).
- Batch integration on CellBench (5 batches, 2 technologies): mixing of batches and of technologies among each
  cell's 15 neighbours relative to perfect mixing (1 = perfect, 0 = none), and median iLISI (k=30).

Prints a markdown table and writes benchmarks/results/latent_quality.{csv,md}.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from _common import markdown_table  # benchmarks/ is the script's folder, first on sys.path

import scvae
from scvae.metrics import batch_mixing, ilisi, knn_accuracy

OUT = Path(__file__).resolve().parent / "results"


def pca(adata, n_comps=50):
    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=n_comps, random_state=0)
    return a.obsm["X_pca"]


def datasets():
    pbmc = scvae.datasets.pbmc68k()
    kang = scvae.datasets.kang()
    kang = kang[kang.obs["condition"] == "control"].copy()
    bench = scvae.datasets.cellbench()
    return [("pbmc68k", pbmc, None), ("kang_control", kang, None), ("cellbench", bench, "batch")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name, adata, batch_key in datasets():
        labelled = adata.obs["is_singlet"].to_numpy() if "is_singlet" in adata.obs else np.ones(adata.n_obs, bool)
        reps = {"PCA (50 PCs)": [pca(adata)]}
        t0 = time.perf_counter()
        for seed in args.seeds:
            a = adata.copy()
            scvae.model.fit(a, batch_key=batch_key, seed=seed, max_epochs=args.max_epochs, progress_bar=False)
            reps.setdefault("scvae", []).append(a.obsm["X_scvae"])
        fit_s = (time.perf_counter() - t0) / len(args.seeds)
        for method, zs in reps.items():
            acc = [knn_accuracy(z[labelled], adata.obs["cell_type"][labelled]) for z in zs]
            row = {
                "dataset": name,
                "method": method,
                "n_runs": len(zs),
                "knn_acc": np.mean(acc),
                "knn_acc_sd": np.std(acc),
            }
            if batch_key:
                row["batch_mixing"] = np.mean([batch_mixing(z, adata.obs[batch_key]) for z in zs])
                row["tech_mixing"] = np.mean([batch_mixing(z, adata.obs["tech"]) for z in zs])
                row["ilisi"] = np.mean([ilisi(z, adata.obs[batch_key]) for z in zs])
            if method == "scvae":
                row["fit_seconds"] = fit_s
            rows.append(row)
    table = pd.DataFrame(rows)
    OUT.mkdir(exist_ok=True)
    table.to_csv(OUT / "latent_quality.csv", index=False)
    md = markdown_table(table)
    (OUT / "latent_quality.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
