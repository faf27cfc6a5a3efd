"""The encoder's sparse input layer against the dense product it replaces, in whole training steps.

    pip install -e ".[test]" "torch==2.13.0"
    python benchmarks/input_layer.py [--blocks 60] [--steps 8]

On the CPU, :class:`scvae.nn.InputLayer` multiplies a minibatch given by its non-zero entries with two embedding-bag
sums (forward and weight gradient) when at most ``scvae.nn.SPARSE_MAX_DENSITY`` of its entries are non-zero, and
with one dense product otherwise. This script times training steps (loss, backward pass, fused Adam; batch 128,
the model of ``speed_vs_scvi.py``: NB, n_latent=10, n_hidden=128, one layer) with the sparse kernel forced
(``max_density=1``) and with the dense product forced (``max_density=0``), alternating blocks of ``--steps``
steps between two copies of the same model ``--blocks`` times in one process, so that the machine's drift from
minute to minute hits both alike. Datasets: seeded synthetic counts (10,000 cells × 2,000 genes, about 11 %
non-zero), Kang with all its genes and with its 2,000 most variable, and CellBench (3,000 genes, about 40 %
non-zero, where the dense product is the default).

Writes ``input_layer.csv`` and ``.md`` to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from _common import markdown_table, synthetic_blocks

OUT = Path(__file__).resolve().parent / "results"


def datasets() -> dict[str, tuple[sp.csr_matrix, np.ndarray]]:
    """name -> (CSR float32 counts, integer batch codes (cells × 1))."""
    from speed_vs_scvi import real_dataset  # the HVG selection of the speed benchmark

    import scvae

    blocks = list(synthetic_blocks(10_000))
    out = {
        "synthetic 10k × 2,000": (
            sp.vstack([b[0] for b in blocks]).tocsr(),
            np.concatenate([b[1]["batch"].cat.codes.to_numpy() for b in blocks]),
        )
    }
    kang = scvae.datasets.kang()
    out[f"Kang, all {kang.n_vars:,} genes"] = (kang.X, np.zeros(kang.n_obs, dtype=np.int64))
    hvg = real_dataset("kang")
    out[f"Kang, {hvg.n_vars:,} HVGs"] = (hvg.X, np.zeros(hvg.n_obs, dtype=np.int64))
    cb = scvae.datasets.cellbench()
    out[f"CellBench, {cb.n_vars:,} genes"] = (cb.X, cb.obs["batch"].cat.codes.to_numpy())
    return {
        k: (sp.csr_matrix(x, dtype=np.float32), np.asarray(c, dtype=np.int64)[:, None]) for k, (x, c) in out.items()
    }


def ab(x: sp.csr_matrix, codes: np.ndarray, blocks: int, steps: int) -> dict[str, float]:
    """Median ms per step with the sparse kernel and with the dense product, alternating blocks of steps."""
    import scvae.nn as N
    from scvae.loaders import Minibatch, make_loader
    from scvae.module import VAE, ModuleConfig

    n_cat = int(codes.max()) + 1
    loader = make_loader(x, codes, np.arange(x.shape[0]), 128, shuffle=True, seed=0)
    batches = list(loader)

    def make():
        torch.manual_seed(0)
        vae = VAE(
            ModuleConfig(x.shape[1], n_latent=10, n_hidden=128, n_layers=1, n_categories=(n_cat,) if n_cat > 1 else ())
        )
        return vae, torch.optim.Adam(vae.parameters(), lr=1e-3, eps=0.01, weight_decay=1e-6, fused=True)

    models = {1.0: make(), 0.0: make()}  # max_density: 1 = the sparse kernel, 0 = the dense product
    times: dict[float, list[float]] = {1.0: [], 0.0: []}
    default = N.entries_times.__defaults__
    step = 0
    try:
        for block in range(blocks):
            for max_density in (1.0, 0.0) if block % 2 == 0 else (0.0, 1.0):
                vae, opt = models[max_density]
                N.entries_times.__defaults__ = (max_density,)
                t0 = time.perf_counter()
                for j in range(steps):
                    xb, cb, nz = batches[(step + j) % len(batches)]
                    loss = vae.loss(Minibatch(xb, cb, nz), kl_weight=0.5).loss
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                times[max_density].append((time.perf_counter() - t0) / steps * 1e3)
            step += steps
    finally:
        N.entries_times.__defaults__ = default
    sparse, dense = np.array(times[1.0]), np.array(times[0.0])
    return {
        "sparse_ms": float(np.median(sparse)),
        "dense_ms": float(np.median(dense)),
        "dense_over_sparse": float(np.median(dense / sparse)),
        "ratio_q25": float(np.quantile(dense / sparse, 0.25)),
        "ratio_q75": float(np.quantile(dense / sparse, 0.75)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=60, help="blocks per variant, alternating")
    parser.add_argument("--steps", type=int, default=8, help="training steps per block")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import scvae.nn as N

    rows = []
    for name, (x, codes) in datasets().items():
        density = x.nnz / (x.shape[0] * x.shape[1])
        res = ab(x, codes, args.blocks, args.steps)
        default = "sparse" if density <= N.SPARSE_MAX_DENSITY else "dense"
        rows.append(
            {
                "data": name,
                "cells": x.shape[0],
                "genes": x.shape[1],
                "non-zero": round(density, 3),
                "default path": default,
                **res,
            }
        )
        print(
            f"{name}: {density:.1%} non-zero; sparse {res['sparse_ms']:.2f} ms/step, dense {res['dense_ms']:.2f}, "
            f"dense/sparse {res['dense_over_sparse']:.3f}",
            flush=True,
        )
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "input_layer.csv", index=False)
    cmd = "python benchmarks/input_layer.py " + shlex.join(sys.argv[1:])
    text = (
        f"# The encoder's sparse input layer vs the dense product\n\nTraining steps of batch 128 (NB, n_latent=10, "
        f"n_hidden=128, one layer), {args.blocks} blocks of {args.steps} steps per variant, alternating, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}. ms per step: medians over the "
        f"blocks; dense/sparse: the median (and quartiles) of the back-to-back block ratios. Above "
        f"{N.SPARSE_MAX_DENSITY:.0%} non-zero entries scvae uses the dense product (`default path`).\n\n"
        f"Command: `{cmd.strip()}`\n\n{markdown_table(df, '.3f')}\n"
    )
    (args.out / "input_layer.md").write_text(text)
    print(
        f"wrote {args.out / 'input_layer.csv'} and .md; median step ratios: "
        + ", ".join(f"{r['data']} {r['dense_over_sparse']:.2f}" for r in rows)
    )


if __name__ == "__main__":
    main()
