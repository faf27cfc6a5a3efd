"""Fingerprints of what the code computes: the sha256 of the latent space, the normalised expression and the
held-out ELBO of a fixed set of small fits (every likelihood, cVAE, IWAE, VampPrior, map_query,
predict_perturbation, DE), on one thread so that they repeat bit for bit on one machine.

A refactor that should not change behaviour is checked by running this before and after it:

    python benchmarks/behaviour.py --out /tmp/before.json      # on the old commit
    python benchmarks/behaviour.py --compare /tmp/before.json  # on the new one: lists what changed

Writes benchmarks/results/behaviour.json (the hashes of the current code) unless --out says otherwise, with the
commit and CPU that wrote it under ``_run`` (and, with --compare, the file compared with and what changed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import machine  # benchmarks/ is the script's folder, first on sys.path

import scvae
from scvae import datasets
from scvae import model as M

RESULTS = Path(__file__).resolve().parent / "results"


def digest(values: object) -> str:
    if hasattr(values, "toarray"):
        values = values.toarray()
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


def held_out_elbo(model: scvae.SCVAE) -> float:
    col = model.history["elbo_validation"]
    return float(col.iloc[model.record.best_epoch - 1])


def fingerprints() -> dict[str, dict[str, object]]:
    pbmc = datasets.pbmc68k()
    pbmc.obs["batch"] = pd.Categorical(np.where(np.arange(pbmc.n_obs) % 3 == 0, "b0", "b1"))
    common = {"max_epochs": 8, "seed": 0, "progress_bar": False}
    fits = {
        "nb": {},
        "zinb": {"likelihood": "zinb"},
        "poisson": {"likelihood": "poisson"},
        "gaussian": {"likelihood": "gaussian"},
        "bernoulli": {"likelihood": "bernoulli"},
        "cvae_gene_batch": {"batch_key": "batch", "dispersion": "gene-batch"},
        "iwae": {"objective": "iwae", "n_importance": 5},
        "vamp": {"prior": "vamp", "n_pseudo_inputs": 20},
        "early_stopping": {"early_stopping": True, "patience": 2, "max_epochs": 12},
    }
    out: dict[str, dict[str, object]] = {}
    for name, kwargs in fits.items():
        adata = pbmc.copy()
        if kwargs.get("likelihood") == "gaussian":
            adata.X = scvae.tl.log_normalize(adata)
        model = M.fit(adata, **{**common, **kwargs})
        out[name] = {
            "latent": digest(adata.obsm["X_scvae"]),
            "normalized": digest(model.get_normalized_expression(adata, return_numpy=True)),
            "sample": digest(model.sample(adata[:50].copy(), seed=1)),
            "held_out_elbo": held_out_elbo(model),
            "epochs": int(model.record.epochs_trained),
        }
        if name == "nb":
            out["nb_log_likelihood"] = {"value": digest(model.log_likelihood(adata[:100].copy(), n_samples=20))}
            de = model.differential_expression(adata, groupby="cell_type", group1="CD14+ Monocyte", n_samples=200)
            out["nb_de"] = {"lfc_mean": digest(de["lfc_mean"]), "proba": digest(de["proba_de"])}
        if name == "cvae_gene_batch":
            ref, query = pbmc[pbmc.obs["batch"] == "b1"].copy(), pbmc[pbmc.obs["batch"] == "b0"].copy()
            query.obs["batch"] = pd.Categorical(["q"] * query.n_obs)
            reference = M.fit(ref, batch_key="batch", **common)
            mapped = reference.map_query(query, max_epochs=6, progress_bar=False)
            out["map_query"] = {
                "query_latent": digest(query.obsm["X_scvae"]),
                "reference_latent": digest(mapped.get_latent(ref)),
                "epochs": len(mapped.history),
            }
    kang = datasets.kang()
    kang = kang[:, np.asarray(kang.X.sum(0)).ravel().argsort()[::-1][:500]].copy()
    model = M.fit(kang, condition_key="condition", max_epochs=8, seed=0, progress_bar=False)
    for method in ("delta", "counterfactual", "transport"):
        pred = model.predict_perturbation(
            kang,
            condition_key="condition",
            control="control",
            stimulated="stimulated",
            cell_type_key="cell_type",
            target="CD14 Mono",
            method=method,
            n_cells=200,
        )
        out[f"perturbation_{method}"] = {"X": digest(pred.X), "n_obs": int(pred.n_obs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "behaviour.json")
    parser.add_argument("--compare", type=Path, help="a file written before; list the fingerprints that differ")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    t0 = time.time()
    out = fingerprints()
    print(f"{len(out)} fits in {time.time() - t0:.0f} s")
    for name, values in out.items():
        print(f"{name:24s} " + "  ".join(f"{k}={v}" for k, v in values.items()))
    out["_run"] = run_record()
    if args.compare:
        before = json.loads(args.compare.read_text())
        changed = [
            f"{n}.{k}: {before[n].get(k)} -> {v}"
            for n, vals in out.items()
            if n != "_run"
            for k, v in vals.items()
            if n not in before or before[n].get(k) != v
        ]
        print("identical to", args.compare) if not changed else print("changed:\n  " + "\n  ".join(changed))
        out["_run"]["compared_with"] = {"file": str(args.compare), "run": before.get("_run"), "changed": changed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


def run_record() -> dict[str, str]:
    """Which code and machine wrote the fingerprints: hashes repeat on one machine, not across CPUs."""
    here = Path(__file__).resolve().parents[1]  # the repository

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=here, capture_output=True, text=True).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD")
        + (" + uncommitted changes" if git("status", "--porcelain", "scvae") else ""),
        "machine": machine(),
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    main()
