"""Rebuild data/cellbench_counts_hvg3000.h5ad from shared/data/cellbench_counts.h5ad.

    python data/make_cellbench_hvg.py ../shared/data/cellbench_counts.h5ad data/cellbench_counts_hvg3000.h5ad

Keeps the 3,000 most variable genes (Scanpy's `seurat` flavour on log-normalised counts, per batch), raw counts
unchanged, every cell and every obs column kept.
"""

import sys

import anndata as ad
import scanpy as sc

src, dst = sys.argv[1], sys.argv[2]
a = ad.read_h5ad(src)
b = a.copy()
sc.pp.normalize_total(b, target_sum=1e4)
sc.pp.log1p(b)
sc.pp.highly_variable_genes(b, n_top_genes=3000, batch_key="batch")
out = a[:, b.var["highly_variable"].to_numpy()].copy()
out.uns["source"] = dict(a.uns["source"])
out.uns["source"]["subset"] = (
    "3,000 highly variable genes (scanpy seurat flavour, batch_key='batch'); data/make_cellbench_hvg.py"
)
out.write_h5ad(dst, compression="gzip")
print(out)
