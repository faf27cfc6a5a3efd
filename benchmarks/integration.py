"""Batch integration: scvae vs scvi-tools, defaults against defaults, scored with scib-metrics.

    pip install -e ".[test,bench]" "torch==2.13.0"   # scvi-tools, scib-metrics, CPU jax (benchmark only)
    python benchmarks/integration.py [--cases kang_hvg cellbench_hvg kang_all cellbench_all] [--seeds 0 1 2]
                                     [--tools pca scvae scvi] [--scvae-args JSON] [--name NAME]

Cases (real data, raw counts, every cell):

- ``kang_hvg`` / ``kang_all``: Kang 2018 PBMCs (2,754 cells), the condition (control / IFN-β) as the batch, on
  its 2,000 most variable genes or on all 9,015;
- ``cellbench_hvg`` / ``cellbench_all``: CellBench (1,408 cells, five batches over CEL-seq2 and Drop-seq; two of
  its five cell lines are only in three of the batches), on its 2,000 most variable genes or on all 11,533
  (``data/cellbench_counts.h5ad``).

Highly variable genes: Scanpy's ``seurat_v3`` flavour on the counts with the batch as ``batch_key`` (what the
scvi-tools tutorials do). PCA: 50 components of log-normalised counts (``normalize_total`` to 1e4, ``log1p``) of
the same genes.

Each tool is called as its user would call it, with its defaults and nothing else set:

- scvae: ``scvae.model.fit(adata, batch_key=..., seed=seed)``;
- scvi-tools: ``SCVI.setup_anndata(adata, batch_key=...)``, ``SCVI(adata)``, ``train()``, seeded through
  ``scvi.settings.seed``.

``--scvae-args '{"key": value, ...}'`` adds keyword arguments to scvae's call (to weigh a setting against the
defaults; the result file then names them). The tools run one after the other in this process, one torch process
at a time; ``time_s`` is the wall time of the training call(s) alone (scvae: ``fit``, which also writes the
latent; scvi: ``setup_anndata`` + ``SCVI`` + ``train``), ``epochs`` the epochs trained.

Scores, all on the tool's latent space (posterior means):

- scib-metrics' ``Benchmarker`` (0.5.x; no min-max scaling): batch correction (iLISI, kBET per label, graph
  connectivity, BRAS (0.5's batch-removal silhouette, which replaced silhouette batch), PCR comparison against
  the PCA), bio conservation (isolated labels, Leiden NMI / ARI, silhouette label, cLISI) and ``total`` = 0.6 bio
  + 0.4 batch, as in scIB;
- ``knn_acc``: 15-NN cell-type accuracy, 5-fold (stratified, seeded), over cell types with at least 20 cells;
- ``mixing``: :func:`scvae.metrics.batch_mixing` with the cell types as ``labels``: the share of a cell's 15
  nearest neighbours from another batch over the share expected within its own cell type (1 = perfect), over
  cell types with at least 20 cells.

Prints a summary (mean and spread, max - min over seeds, per case and method), scvae minus scVI per case (marked
a win or a loss only where the difference is larger than either tool's spread) and the per-run table, and writes
``benchmarks/results/<name>.csv`` (one row per case, method and seed, with every scib-metrics score; written after
each seed) and ``<name>.md`` (default name ``integration``). ``--report-only`` rewrites the ``.md`` from the
``.csv`` (e.g. of a run stopped early).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _common import markdown_table  # benchmarks/ is the script's folder, first on sys.path
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier

import scvae
from scvae.metrics import batch_mixing

OUT = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parent.parent / "data"
CASES = ("kang_hvg", "cellbench_hvg", "kang_all", "cellbench_all")
MIN_CELLS = 20
N_HVG = 2000

logger = logging.getLogger("integration")


def load_case(name: str) -> tuple[ad.AnnData, str]:
    """The case's cells and genes (raw counts) and its batch column; cell types in ``obs['cell_type']``."""
    if name.startswith("kang"):
        adata, batch_key = scvae.datasets.kang(), "condition"
    elif name.startswith("cellbench"):
        adata, batch_key = ad.read_h5ad(DATA / "cellbench_counts.h5ad"), "batch"
    else:
        raise ValueError(f"unknown case {name!r}; choose from {CASES}")
    adata.obs_names_make_unique()
    if name.endswith("_hvg"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hvg = sc.pp.highly_variable_genes(
                adata, n_top_genes=N_HVG, flavor="seurat_v3", batch_key=batch_key, inplace=False
            )
        adata = adata[:, hvg["highly_variable"].to_numpy()].copy()
    keep = np.asarray(adata.X.sum(1)).ravel() > 0
    adata = adata[keep].copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    adata.obs[batch_key] = adata.obs[batch_key].astype("category")
    return adata, batch_key


def run_pca(adata: ad.AnnData, batch_key: str, seed: int, **_: object) -> tuple[np.ndarray, float, int]:
    t0 = time.perf_counter()
    a = ad.AnnData(adata.X.copy())
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=50, random_state=seed)
    return a.obsm["X_pca"], time.perf_counter() - t0, 0


def run_scvae(adata: ad.AnnData, batch_key: str, seed: int, extra: dict | None = None) -> tuple[np.ndarray, float, int]:
    a = adata.copy()
    t0 = time.perf_counter()
    model = scvae.model.fit(a, batch_key=batch_key, seed=seed, progress_bar=False, **(extra or {}))
    seconds = time.perf_counter() - t0
    return a.obsm["X_scvae"], seconds, int(model.record.epochs_trained)


def run_scvi(adata: ad.AnnData, batch_key: str, seed: int, **_: object) -> tuple[np.ndarray, float, int]:
    import scvi

    scvi.settings.seed = seed
    a = adata.copy()
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(a, batch_key=batch_key)
    model = scvi.model.SCVI(a)
    model.train(enable_progress_bar=False)
    seconds = time.perf_counter() - t0
    return model.get_latent_representation(), seconds, int(model.history["elbo_train"].shape[0])


RUNNERS = {"pca": run_pca, "scvae": run_scvae, "scvi": run_scvi}


def knn_accuracy_cv(rep: np.ndarray, labels: np.ndarray, seed: int, k: int = 15) -> float:
    """15-NN cell-type accuracy over 5 stratified folds (seeded)."""
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    hits = 0
    for train, test in folds.split(rep, labels):
        clf = KNeighborsClassifier(n_neighbors=k).fit(rep[train], labels[train])
        hits += int((clf.predict(rep[test]) == labels[test]).sum())
    return hits / len(labels)


def own_scores(rep: np.ndarray, adata: ad.AnnData, batch_key: str) -> dict[str, float]:
    counts = adata.obs["cell_type"].value_counts()
    big = adata.obs["cell_type"].isin(counts.index[counts >= MIN_CELLS]).to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    return {
        "knn_acc": knn_accuracy_cv(rep[big], labels[big], seed=0),
        "mixing": batch_mixing(rep, adata.obs[batch_key], labels=labels, min_cells=MIN_CELLS),
    }


def scib_scores(adata: ad.AnnData, batch_key: str, reps: dict[str, np.ndarray]) -> pd.DataFrame:
    """scib-metrics' Benchmarker on the given embeddings; one row per embedding (no min-max scaling)."""
    from scib_metrics.benchmark import Benchmarker, BioConservation

    a = ad.AnnData(obs=adata.obs[[batch_key, "cell_type"]].copy())
    a.obsm["X_pca"] = run_pca(adata, batch_key, 0)[0]
    for key, rep in reps.items():
        a.obsm[key] = np.asarray(rep, dtype=np.float32)
    bench = Benchmarker(
        a,
        batch_key=batch_key,
        label_key="cell_type",
        embedding_obsm_keys=list(reps),
        pre_integrated_embedding_obsm_key="X_pca",
        n_jobs=1,
        bio_conservation_metrics=BioConservation(
            nmi_ari_cluster_labels_leiden=True, nmi_ari_cluster_labels_kmeans=False
        ),
        progress_bar=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    table = table.drop(index="Metric Type", errors="ignore").astype(float)
    return table.rename(
        columns={"Batch correction": "batch_correction", "Bio conservation": "bio_conservation", "Total": "total"}
    )


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["time_s", "epochs", "knn_acc", "mixing", "batch_correction", "bio_conservation", "total"]
    rows = []
    for (case, method), g in runs.groupby(["case", "method"], sort=False):
        row: dict[str, object] = {"case": case, "method": method, "seeds": len(g)}
        for c in cols:
            row[c] = float(g[c].mean())
            row[f"{c}_spread"] = float(g[c].max() - g[c].min())
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tools", nargs="+", default=["pca", "scvae", "scvi"], choices=list(RUNNERS))
    parser.add_argument("--scvae-args", type=json.loads, default={}, help="extra keyword arguments for scvae's fit")
    parser.add_argument("--name", default="integration")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report-only", action="store_true", help="rewrite <name>.md from <name>.csv")
    parser.add_argument("--command", default=None, help="with --report-only: the run's command, for the header")
    args = parser.parse_args()
    if args.report_only:
        runs = pd.read_csv(args.out / f"{args.name}.csv")
        command = args.command or shlex.join(sys.argv[1:]).replace(" --report-only", "")
        write_report(runs, args.out / f"{args.name}.md", command, args.scvae_args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("scvae", "lightning", "scvi", "jax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases:
        adata, batch_key = load_case(case)
        logger.info("%s: %d cells x %d genes, batch %r", case, adata.n_obs, adata.n_vars, batch_key)
        for seed in args.seeds:
            reps = {}
            for tool in args.tools:
                if tool == "pca" and seed != args.seeds[0]:
                    continue  # deterministic: once per case
                rep, seconds, epochs = RUNNERS[tool](adata, batch_key, seed, extra=args.scvae_args)
                reps[tool] = rep
                rows.append(
                    {
                        "case": case,
                        "method": tool,
                        "seed": seed,
                        "n_cells": adata.n_obs,
                        "n_genes": adata.n_vars,
                        "time_s": seconds,
                        "epochs": epochs,
                        **own_scores(rep, adata, batch_key),
                    }
                )
                logger.info(
                    "%s seed %d %s: %.1f s, %d epochs, %s",
                    case,
                    seed,
                    tool,
                    seconds,
                    epochs,
                    {k: round(v, 3) for k, v in rows[-1].items() if k in ("knn_acc", "mixing")},
                )
            scib = scib_scores(adata, batch_key, reps)
            for row in rows[-len(reps) :]:
                row.update(scib.loc[row["method"]].astype(float).to_dict())
            runs = pd.DataFrame(rows)
            runs.to_csv(args.out / f"{args.name}.csv", index=False)  # written as it goes
    runs = pd.DataFrame(rows)
    if args.scvae_args:
        runs["scvae_args"] = json.dumps(args.scvae_args)
    runs.to_csv(args.out / f"{args.name}.csv", index=False)
    write_report(runs, args.out / f"{args.name}.md", shlex.join(sys.argv[1:]), args.scvae_args)


def versus(summary: pd.DataFrame) -> pd.DataFrame:
    """scvae minus scVI per case and score, and whether the difference is larger than both spreads."""
    rows = []
    for case, g in summary.groupby("case", sort=False):
        g = g.set_index("method")
        if not {"scvae", "scvi"} <= set(g.index):
            continue
        row: dict[str, object] = {"case": case, "time_ratio": g.loc["scvae", "time_s"] / g.loc["scvi", "time_s"]}
        for c in ("knn_acc", "mixing", "batch_correction", "bio_conservation", "total"):
            diff = g.loc["scvae", c] - g.loc["scvi", c]
            spread = max(g.loc["scvae", f"{c}_spread"], g.loc["scvi", f"{c}_spread"])
            row[c] = diff
            row[f"{c}_beyond_spread"] = "win" if diff > spread else ("loss" if diff < -spread else "within")
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(runs: pd.DataFrame, path: Path, command: str, scvae_args: dict) -> None:
    import scib_metrics

    versions = f"scvae {scvae.__version__}, scib-metrics {scib_metrics.__version__}"
    if "scvi" in set(runs["method"]):
        import scvi

        versions += f", scvi-tools {scvi.__version__}"
    summary = summarise(runs)
    main_cols = [
        "case",
        "method",
        "seed",
        "time_s",
        "epochs",
        "knn_acc",
        "mixing",
        "batch_correction",
        "bio_conservation",
        "total",
    ]
    parts = [
        f"`python benchmarks/integration.py {command}` ({versions}; 2-core CPU, one tool at a time)",
        f"scvae args: `{json.dumps(scvae_args)}`" if scvae_args else "Defaults against defaults.",
        "Mean and spread (max - min) over seeds:",
        markdown_table(summary),
    ]
    vs = versus(summary)
    if len(vs):
        parts += [
            "scvae minus scVI (means; 'win'/'loss': the difference is larger than either tool's spread; "
            "time_ratio: scvae's time to a model over scVI's):",
            markdown_table(vs),
        ]
    parts += ["Per run:", markdown_table(runs[main_cols])]
    md = "\n\n".join(parts)
    path.write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
