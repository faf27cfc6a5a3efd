"""Memory and time of differential expression on 100,000 cells × 20,000 genes (seeded synthetic sparse counts).

A model is trained for one epoch on the first 5,000 cells (its quality does not matter here), then
``model.differential_expression`` runs on all cells (two random halves, n_samples=5000). Prints the time and the
peak resident memory during the call (Linux: VmHWM, reset just before it) next to the memory held before it.

    python benchmarks/de_memory.py
"""

import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import scvae


def rss():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024


def cur():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024


rng = np.random.default_rng(0)
N, G, density = 100_000, 20_000, 0.05
nnz_per_row = int(G * density)
indptr = np.arange(N + 1, dtype=np.int64) * nnz_per_row
indices = np.sort(rng.integers(0, G, size=(N, nnz_per_row)), axis=1).ravel().astype(np.int32)
data = rng.integers(1, 5, size=N * nnz_per_row).astype(np.float32)
X = sp.csr_matrix((data, indices, indptr), shape=(N, G))
X.sum_duplicates()
a = ad.AnnData(
    X, obs=pd.DataFrame({"group": np.where(rng.random(N) < 0.5, "a", "b")}, index=[str(i) for i in range(N)])
)
a.var_names = [f"g{i}" for i in range(G)]
print(
    f"data: {X.nnz / 1e6:.0f}M non-zeros, {(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**30:.2f} GiB; RSS now {cur():.0f} MB, peak {rss():.0f} MB",
    flush=True,
)
small = a[:5000].copy()
m = scvae.model.fit(small, max_epochs=1, progress_bar=False)
del small
base = cur()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
t = time.perf_counter()
df = m.differential_expression(a, groupby="group", group1="a", n_samples=5000)
print(
    f"DE on {N} cells x {G} genes: {time.perf_counter() - t:.1f} s; RSS before DE {base:.0f} MB, peak RSS {rss():.0f} MB; {len(df)} rows",
    flush=True,
)
