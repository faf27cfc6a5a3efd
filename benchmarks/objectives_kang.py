"""Held-out log-likelihood of the standard VAE, IWAE (K=5) and VampPrior training on the Kang data.

A larger companion of ``objectives_priors.py``: Kang et al. 2018 PBMCs (``scvae.datasets.kang()``), its 2,000
most variable genes (Seurat flavour on log-normalised counts), split once (seeded) into 80 % training and 20 %
held-out cells. For seeds 0 and 1, each configuration is trained with scvae's defaults (early stopping), and the
held-out log p(x) is estimated by importance sampling with K=1000 (``objectives_priors.heldout_terms``).

    python benchmarks/objectives_kang.py [--configs "IWAE K=20"]

Writes ``benchmarks/results/objectives_kang.csv`` (rows of configurations run again replace their old rows; others
are kept, so that a configuration can be added later: training is bit-reproducible on CPU) and prints the mean ±
sd and the difference to the standard VAE of the same seed.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc

import scvae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from objectives_priors import heldout_terms  # noqa: E402

logging.basicConfig(level=logging.WARNING)
a = scvae.datasets.kang()
tmp = a.copy()
tmp.X = scvae.tl.log_normalize(a)
sc.pp.highly_variable_genes(tmp, n_top_genes=2000)
a = a[:, tmp.var["highly_variable"].to_numpy()].copy()
a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
perm = np.random.default_rng(12345).permutation(a.n_obs)
n_held = a.n_obs // 5
held, train = a[np.sort(perm[:n_held])].copy(), a[np.sort(perm[n_held:])].copy()
print(train.shape, held.shape, flush=True)
CONFIGS = {
    "standard": {},
    "IWAE K=5": dict(objective="iwae", n_importance=5),
    "IWAE K=20": dict(objective="iwae", n_importance=20),
    "VampPrior": dict(prior="vamp"),
}
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--configs", nargs="+", default=["standard", "IWAE K=5", "VampPrior"], choices=list(CONFIGS))
args = parser.parse_args()
configs = {k: CONFIGS[k] for k in args.configs}
rows = []
for name in configs:
    for seed in (0, 1):
        t = time.time()
        m = scvae.model.fit(train, seed=seed, progress_bar=False, **configs[name])
        r = heldout_terms(m, held, 1000, seed=100 + seed)
        rows.append({"config": name, "seed": seed, "epochs": m.config["epochs_trained"], "fit_s": time.time() - t, **r})
        print(rows[-1], flush=True)
out = Path(__file__).resolve().parent / "results" / "objectives_kang.csv"
df = pd.DataFrame(rows)
if out.exists():
    old = pd.read_csv(out)
    df = pd.concat([old[~old["config"].isin(list(configs))], df], ignore_index=True)
df.to_csv(out, index=False)
base = df[df.config == "standard"].set_index("seed").heldout_ll
for name, g in df.groupby("config", sort=False):
    d = g.set_index("seed").heldout_ll - base
    print(f"{name}: ll {g.heldout_ll.mean():.2f} ± {g.heldout_ll.std():.2f}; Δ {d.mean():+.2f} ± {d.std():.2f}; "
          f"elbo {g.heldout_elbo.mean():.2f}")
