"""Objectives and priors on real data: held-out log-likelihood and latent quality.

PBMC 68k subset (700 cells × 765 genes, raw counts, 10 cell types; ``scvae.datasets.pbmc68k()``), split once
(seeded) into 80 % training and 20 % held-out cells. For every configuration and model seed we train an NB VAE on
the training cells with fit's defaults (default epochs, the final weights; a validation split of them is held out
for the validation ELBO) and report, on the held-out cells:

- ``heldout_ll``: the importance-sampled marginal log-likelihood, K = 1000 (``model.log_likelihood``), nats/cell;
- ``heldout_elbo``: the ELBO (mean log importance weight over the same samples) and its two terms,
  ``reconstruction`` (E_q log p(x | z)) and ``kl`` (E_q[log q(z | x) - log p(z)]);
- ``knn_acc``: 15-NN cell-type accuracy on the latent means of all 700 cells.

Configurations: standard VAE (ELBO, N(0, I), beta = 1), VampPrior, IWAE training with K = 5 and 20, VampPrior
with IWAE K = 5, and beta in {0.5, 2, 4}.

Run ``python benchmarks/objectives_priors.py`` (default: seeds 0 and 1, scvae's default epochs; about 15 min on a
busy 2-core CPU, IWAE K=20 being most of it; ``--configs`` picks a subset, ``--seeds 0 1 2`` adds a seed). Writes
``benchmarks/results/objectives_priors.csv`` (one row per configuration and seed) and ``.md`` (mean ± sd over
seeds, and the difference to the standard VAE with its spread).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import scvae
from scvae.metrics import knn_accuracy
from scvae.objectives import estimate_log_likelihood

CONFIGS: dict[str, dict] = {
    "standard (ELBO, N(0,I), β=1)": {},
    "VampPrior (ELBO)": dict(prior="vamp", n_pseudo_inputs=100),
    "IWAE K=5": dict(objective="iwae", n_importance=5),
    "IWAE K=20": dict(objective="iwae", n_importance=20),
    "VampPrior + IWAE K=5": dict(prior="vamp", n_pseudo_inputs=100, objective="iwae", n_importance=5),
    "β=0.5": dict(beta=0.5),
    "β=2": dict(beta=2.0),
    "β=4": dict(beta=4.0),
}
OUT = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def heldout_terms(model: scvae.model.SCVAE, adata, n_samples: int, seed: int) -> dict[str, float]:
    """Mean held-out log-likelihood (K = n_samples), ELBO, reconstruction and KL per cell."""
    x, codes = model.read(adata)
    batches = list(model.batches(x, codes, 256))
    ll, elbo = estimate_log_likelihood(model.module, batches, n_samples, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    comps = model.module.prior_components()
    rec, kl, n = 0.0, 0.0, 0
    for batch in batches:
        t = model.module.log_importance_weights(batch, 100, generator=gen, components=comps)
        rec += t.log_px_z.mean(0).sum().item()
        kl += (t.log_qz - t.log_pz).mean(0).sum().item()
        n += batch.x.shape[0]
    return {"heldout_ll": float(ll.mean()), "heldout_elbo": float(elbo.mean()), "reconstruction": rec / n, "kl": kl / n}


def run(seeds: list[int], n_samples: int, max_epochs: int | None, configs: list[str]) -> pd.DataFrame:
    adata = scvae.datasets.pbmc68k()
    perm = np.random.default_rng(12345).permutation(adata.n_obs)
    n_held = adata.n_obs // 5
    held, train = adata[np.sort(perm[:n_held])].copy(), adata[np.sort(perm[n_held:])].copy()
    rows = []
    for name in configs:
        for seed in seeds:
            t0 = time.time()
            model = scvae.model.fit(train, seed=seed, max_epochs=max_epochs, progress_bar=False, **CONFIGS[name])
            fit_s = time.time() - t0
            row = {"config": name, "seed": seed, "epochs": model.record.epochs_trained, "fit_s": round(fit_s, 1)}
            row.update(heldout_terms(model, held, n_samples, seed=100 + seed))
            row["knn_acc"] = knn_accuracy(model.get_latent(adata), adata.obs["cell_type"], k=15)
            rows.append(row)
            logging.info("%s seed %d: %s", name, seed, {k: row[k] for k in ("heldout_ll", "knn_acc", "fit_s")})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> str:
    """Markdown: mean ± sd over seeds per configuration, and the paired difference to the standard VAE."""
    metrics = ["heldout_ll", "heldout_elbo", "reconstruction", "kl", "knn_acc"]
    base = df[df["config"] == next(iter(CONFIGS))].set_index("seed")["heldout_ll"]
    lines = [
        "| configuration | held-out log p(x) (K=1000) | Δ log p(x) vs standard (paired, mean ± sd) | held-out ELBO "
        "| reconstruction | KL | k-NN acc. | epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in df.groupby("config", sort=False):
        stats = {m: (g[m].mean(), g[m].std(ddof=1) if len(g) > 1 else float("nan")) for m in metrics}
        diff = g.set_index("seed")["heldout_ll"] - base.reindex(g["seed"]).to_numpy()
        d_sd = diff.std(ddof=1) if len(diff) > 1 else float("nan")
        lines.append(
            f"| {name} | {stats['heldout_ll'][0]:.2f} ± {stats['heldout_ll'][1]:.2f} | {diff.mean():+.2f} ± {d_sd:.2f} "
            f"| {stats['heldout_elbo'][0]:.2f} ± {stats['heldout_elbo'][1]:.2f} "
            f"| {stats['reconstruction'][0]:.2f} | {stats['kl'][0]:.2f} "
            f"| {stats['knn_acc'][0]:.3f} ± {stats['knn_acc'][1]:.3f} | {g['epochs'].mean():.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n-samples", type=int, default=1000, help="importance samples for log p(x)")
    parser.add_argument(
        "--max-epochs", type=int, default=0, help="0: scvae's default (final weights, no early stopping)"
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this size)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning.pytorch", "lightning.fabric", "scvae"):
        logging.getLogger(name).setLevel(logging.WARNING)
    parser.add_argument("--wall", type=float, default=None, help=argparse.SUPPRESS)  # with --from-csv
    parser.add_argument("--from-csv", action="store_true", help="only rewrite the .md from the saved .csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.from_csv:
        df = pd.read_csv(OUT / "objectives_priors.csv")
        args.seeds = sorted(df["seed"].unique().tolist())
    else:
        df = run(args.seeds, args.n_samples, args.max_epochs or None, args.configs)
    wall = args.wall if args.wall is not None else time.time() - t0
    OUT.mkdir(exist_ok=True)
    df.to_csv(OUT / "objectives_priors.csv", index=False)
    table = summarise(df)
    epochs = "scvae's default max_epochs" if not args.max_epochs else f"max_epochs={args.max_epochs}"
    header = (
        "# Objectives and priors: held-out log-likelihood on PBMC (560 training / 140 held-out cells)\n\n"
        f"NB VAE, n_latent=10, {epochs}, fit's other defaults (no early stopping: the final weights; a 10 % "
        "validation split of the training cells is held out of training); "
        f"seeds {args.seeds}; log p(x) by importance sampling with K={args.n_samples}; nats per cell (higher is "
        "better). Δ is the difference to the standard VAE of the same seed; ± is the sd over seeds. "
        f"Wall time {wall / 60:.1f} min on CPU ({args.threads} torch thread, a 2-core machine shared with other "
        "jobs).\n\n"
        "Command: `python benchmarks/objectives_priors.py "
        f"--seeds {' '.join(map(str, args.seeds))}"
        + ("" if not args.max_epochs else f" --max-epochs {args.max_epochs}")
        + "`\n\n"
    )
    (OUT / "objectives_priors.md").write_text(header + table + "\n")
    print(table)
    print(f"\nwall time {wall:.0f} s; wrote {OUT / 'objectives_priors.csv'} and .md")


if __name__ == "__main__":
    main()
