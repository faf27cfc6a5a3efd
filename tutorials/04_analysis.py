# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # After fitting: the command line, differential expression and reference mapping
#
# Three everyday questions, answered with one model each:
#
# 1. **From a shell**: train on an .h5ad, inspect the saved model, and test genes, without writing Python.
# 2. **Which genes respond?** Bayesian differential expression between interferon-β stimulated and control
#    CD14 monocytes (Kang et al. 2018), a volcano plot, and the same test in scanpy's `rank_genes_groups` layout.
# 3. **Placing new samples on a trusted model**: a reference trained on the four CEL-seq2 plates of CellBench;
#    the Drop-seq batch, never seen, is mapped onto it (only the new batch's parameters are trained, scArches
#    style) and its cell lines are transferred from the reference.
#
# Runs headless in about five minutes on two CPU cores (benchmarks/results/docs_timing.md);
# `SCVAE_TUTORIAL_FAST=1` shortens training for smoke tests.

# %%
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc

import scvae

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
try:
    HERE = Path(__file__).resolve().parent
except NameError:  # running as a notebook
    HERE = Path.cwd()
FIGURES = HERE / "figures"
FIGURES.mkdir(parents=True, exist_ok=True)
FAST = os.environ.get("SCVAE_TUTORIAL_FAST") == "1"
EPOCHS = 5 if FAST else None  # None: scvae's default for the number of cells (final weights)
WORK = Path(tempfile.mkdtemp(prefix="scvae_tutorial_"))
SCVAE = [shutil.which("scvae")] if shutil.which("scvae") else [sys.executable, "-m", "scvae.cli"]

# %% [markdown]
# ## 1. The command line
#
# `scvae fit` reads an .h5ad of raw counts and writes a copy with `obsm["X_scvae"]` and `uns["scvae"]`, plus the
# model folder; the input is never touched. `scvae info` says what a model was trained on, and `scvae de` writes
# a differential-expression table. Every command has `--help` with an example.

# %%
kang_file = scvae.datasets.data_dir() / "kang_ifnb_counts.h5ad"
fit_cmd = [
    *SCVAE,
    "fit",
    str(kang_file),
    "-o",
    str(WORK / "kang_scvae.h5ad"),
    "--model-dir",
    str(WORK / "kang_model"),
    "-q",
] + (["--max-epochs", str(EPOCHS)] if EPOCHS else [])
start = time.perf_counter()
subprocess.run(fit_cmd, check=True)
print(f"scvae fit: {time.perf_counter() - start:.0f} s")
print(subprocess.run([*SCVAE, "info", str(WORK / "kang_model")], check=True, capture_output=True, text=True).stdout)

de_cmd = [
    *SCVAE,
    "de",
    str(kang_file),
    "--model-dir",
    str(WORK / "kang_model"),
    "-o",
    str(WORK / "cd14_de.csv"),
    "--groupby",
    "condition",
    "--group1",
    "stimulated",
    "--group2",
    "control",
    "--subset",
    "cell_type=CD14 Mono",
    "-q",
] + (["--n-samples", "1000"] if FAST else [])
subprocess.run(de_cmd, check=True)
print(pd.read_csv(WORK / "cd14_de.csv", index_col=0).head(10)[["lfc_mean", "proba_de", "bayes_factor", "is_de"]])

# %% [markdown]
# ## 2. Differential expression in Python
#
# The same model, loaded from its folder. For two groups of cells the model draws cells and latent codes from
# the posterior and decodes their expected expression; the paired draws give a posterior over each gene's log2
# fold change. `proba_de` is the probability that |LFC| > `delta` (0.25); genes are called DE (`is_de`) so that
# the expected share of false discoveries is at most 5 %.

# %%
model = scvae.model.load(WORK / "kang_model")
adata = sc.read_h5ad(WORK / "kang_scvae.h5ad")
mono = adata[adata.obs["cell_type"] == "CD14 Mono"].copy()
de = model.differential_expression(
    mono, groupby="condition", group1="stimulated", group2="control", n_samples=1000 if FAST else 5000, seed=0
)
up = de[de["is_de"] & (de["lfc_mean"] > 0)]
print(f"{int(de['is_de'].sum())} genes called DE, {len(up)} up in stimulated; strongest up:")
print(
    up.sort_values("lfc_mean", ascending=False).head(15)[
        ["lfc_mean", "lfc_ci_low", "lfc_ci_high", "proba_de", "non_zeros_proportion1", "non_zeros_proportion2"]
    ]
)

isgs = ["ISG15", "IFI6", "IFIT1", "IFIT3", "MX1", "OAS1", "IFITM3", "RSAD2", "ISG20", "IFI44L"]
print("known interferon-stimulated genes:")
print(de.loc[[g for g in isgs if g in de.index], ["lfc_mean", "proba_de", "is_de"]])

ax = scvae.pl.volcano(de, n_labels=15, title="CD14 monocytes: IFN-β stimulated vs control")
plt.savefig(FIGURES / "04_volcano.png", dpi=120, bbox_inches="tight")
plt.close()

# %% [markdown]
# `scvae.tl.rank_genes_groups` writes the same posterior in scanpy's layout, so scanpy's plots read it as they
# are. Here: each cell type's markers against all other cells, shown as a dot plot on log-normalised data.

# %%
scvae.tl.rank_genes_groups(
    adata, model, "cell_type", groups=["CD14 Mono", "CD4 T", "B", "NK"], n_samples=1000 if FAST else 5000
)
print(sc.get.rank_genes_groups_df(adata, group="B", key="rank_genes_groups_scvae").head(8))
adata.layers["log_normalized"] = scvae.tl.log_normalize(adata)
sc.pl.rank_genes_groups_dotplot(
    adata, key="rank_genes_groups_scvae", n_genes=4, layer="log_normalized", dendrogram=False, show=False
)
plt.savefig(FIGURES / "04_markers_dotplot.png", dpi=120, bbox_inches="tight")
plt.close()

# %% [markdown]
# ## 3. Mapping a new batch onto a reference
#
# CellBench: five cell lines, four CEL-seq2 plates and one Drop-seq batch. The reference model sees the
# CEL-seq2 plates only. `model.map_query` extends the batch label with the Drop-seq batch and trains *only* the
# parameters of that new category (its columns in the first encoder layer and the decoder); every reference
# weight is frozen, so the reference cells keep their latent codes exactly. `scvae.tl.transfer_labels` then
# gives each query cell the majority label of its nearest reference cells, with an uncertainty.

# %%
cb = scvae.datasets.cellbench()
is_query = (cb.obs["batch"] == "Dropseq_3cl").to_numpy()
ref, query = cb[~is_query].copy(), cb[is_query].copy()
ref_model = scvae.model.fit(ref, batch_key="batch", max_epochs=EPOCHS, seed=0, progress_bar=False)
ref_latent = ref.obsm["X_scvae"].copy()

start = time.perf_counter()
query_model = ref_model.map_query(query, max_epochs=EPOCHS, seed=0, progress_bar=False)
print(f"query mapped in {time.perf_counter() - start:.1f} s")
print("reference latent unchanged:", np.array_equal(query_model.get_latent(ref), ref_latent))

pred = scvae.tl.transfer_labels(ref, query, label_key="cell_type", k=15)
accuracy = (pred["cell_type"].astype(str) == query.obs["cell_type"].astype(str)).mean()
print(f"label transfer accuracy on the Drop-seq cells: {accuracy:.3f}")
print(pd.crosstab(query.obs["cell_type"], pred["cell_type"]))

# %% [markdown]
# The query on the reference's map: one UMAP of reference and query latents, coloured by where each cell comes
# from, by its true cell line, and by the transferred label's uncertainty.

# %%
both = sc.concat({"reference": ref, "query": query}, label="dataset", index_unique="-")
both.obsm["X_scvae"] = np.vstack([ref.obsm["X_scvae"], query.obsm["X_scvae"]])
both.obs["uncertainty"] = np.r_[np.zeros(ref.n_obs), pred["cell_type_uncertainty"].to_numpy()]
mixing = scvae.metrics.batch_mixing(both.obsm["X_scvae"], both.obs["dataset"])
print(f"query/reference mixing (1 = ideal): {mixing:.2f}")
sc.pp.neighbors(both, use_rep="X_scvae")
sc.tl.umap(both, random_state=0)
sc.pl.umap(both, color=["dataset", "cell_type", "uncertainty"], show=False)
plt.savefig(FIGURES / "04_query_on_reference.png", dpi=120, bbox_inches="tight")
plt.close()
shutil.rmtree(WORK)
