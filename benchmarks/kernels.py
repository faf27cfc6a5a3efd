"""The speed of scvae's hand-written kernels against the plain torch code they replace (the figures quoted in
``scvae/kernels.py`` and ``scvae/plan.py``).

    python benchmarks/kernels.py [--rounds 21] [--threads 2]

1. The encoder's input layer on a sparse minibatch (128 cells × 2,000 genes, width 128), forward and weight
   gradient: :func:`scvae.kernels.entries_times` on the non-zero entries against the dense product, at several
   densities (share of non-zero entries); the ratio dense / sparse falls below 1 past the crossover, which sets
   ``SPARSE_MAX_DENSITY``.
2. :func:`scvae.kernels.digamma` against ``torch.digamma`` in float32 on the arguments the NB backward pass gives
   it (count + dispersion at the non-zero entries of a minibatch of density 0.11), and a whole training step
   with each.
3. One Adam step over the parameters of the default VAE on 2,000 genes: ``fused=True`` (what the training plan
   uses on CPU and GPU) against the default per-tensor (``foreach``) loop, and a whole training step (forward,
   backward, optimizer) with each, so the saving reads as a share of a step.

Medians over ``--rounds`` rounds (scvae's kernel and the torch code it replaces called in turn). Prints a table and writes
``kernels.csv`` and ``kernels.md`` to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import markdown_table

from scvae.kernels import Entries, digamma, entries_times
from scvae.loaders import Minibatch
from scvae.module import VAE, ModuleConfig

OUT = Path(__file__).resolve().parent / "results"
CELLS, GENES, WIDTH = 128, 2000, 128


def alternate(new, old, rounds: int) -> tuple[float, float]:  # noqa: ANN001
    """Median milliseconds of ``new()`` and ``old()``, called in turn ``rounds`` times each after a warm-up call,
    so that drifts of the machine hit both."""
    new(), old()
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(rounds):
        for i, fn in enumerate((new, old)):
            t = time.perf_counter()
            fn()
            times[i].append(1e3 * (time.perf_counter() - t))
    return float(np.median(times[0])), float(np.median(times[1]))


def sparse_minibatch(density: float, seed: int = 0) -> tuple[Entries, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(CELLS, GENES, generator=gen) < density
    dense = torch.where(mask, torch.randint(1, 20, (CELLS, GENES), generator=gen).float(), torch.zeros(()))
    rows, cols = mask.nonzero(as_tuple=True)
    return Entries(torch.log1p(dense[rows, cols]), rows, cols, (CELLS, GENES)), torch.log1p(dense)


def input_layer(densities: list[float], rounds: int) -> list[dict]:
    weight = torch.randn(GENES, WIDTH, requires_grad=True)
    rows = []
    for density in densities:
        entries, dense = sparse_minibatch(density)

        def sparse(entries: Entries = entries) -> None:
            entries_times(entries, weight, max_density=1.0).sum().backward()

        def full(dense: torch.Tensor = dense) -> None:
            (dense @ weight).sum().backward()

        s, d = alternate(sparse, full, rounds)
        rows.append({"part": f"input layer, density {density:.2f}", "new_ms": s, "old_ms": d, "old_over_new": d / s})
    return rows


def _batch() -> Minibatch:
    entries, dense = sparse_minibatch(0.11)
    x = torch.expm1(dense).round()
    x[:, 0] += 1  # no empty cells
    return Minibatch(x, None, torch.stack([entries.rows, entries.cols]))


def digamma_rows(rounds: int) -> list[dict]:
    """Alone, on the arguments the NB backward pass gives it (count + dispersion at a minibatch's non-zero
    entries), and within a whole training step (scvae.kernels.digamma swapped for torch.digamma)."""
    import scvae.kernels as kernels

    batch = _batch()
    theta = torch.rand(GENES).mul(10).add(0.05)
    rows, cols = batch.nonzero
    y = batch.x[rows, cols] + theta[cols]
    s, d = alternate(lambda: digamma(y), lambda: torch.digamma(y), rounds)
    err = float((digamma(y) - torch.digamma(y.double()).float()).abs().max())
    out = [
        {
            "part": f"digamma at {len(y):,} non-zero entries (max abs difference {err:.1e})",
            "new_ms": s,
            "old_ms": d,
            "old_over_new": d / s,
        }
    ]
    steps = []
    for fn in (digamma, torch.digamma):
        torch.manual_seed(0)
        vae = VAE(ModuleConfig(GENES))
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3, eps=0.01, fused=True)

        def step(vae: VAE = vae, opt: torch.optim.Adam = opt, fn=fn) -> None:  # noqa: ANN001
            kernels.digamma = fn
            opt.zero_grad(set_to_none=True)
            vae.loss(batch).loss.backward()
            opt.step()

        steps.append(step)
    s, d = alternate(*steps, rounds)
    kernels.digamma = digamma
    out.append({"part": "digamma: training step", "new_ms": s, "old_ms": d, "old_over_new": d / s})
    return out


def adam_rows(rounds: int) -> list[dict]:
    batch = _batch()
    out = []
    for what in ("optimizer step", "training step"):
        steps = []
        for fused in (True, False):
            torch.manual_seed(0)
            vae = VAE(ModuleConfig(GENES))
            opt = torch.optim.Adam(vae.parameters(), lr=1e-3, eps=0.01, fused=fused)
            vae.loss(batch).loss.backward()  # gradients (and Adam's state) exist before timing
            opt.step()

            def step(vae: VAE = vae, opt: torch.optim.Adam = opt, what: str = what) -> None:
                if what == "training step":
                    opt.zero_grad(set_to_none=True)
                    vae.loss(batch).loss.backward()
                opt.step()

            steps.append(step)
        times = dict(zip((True, False), alternate(*steps, rounds)))
        out.append(
            {
                "part": f"Adam, fused against per-tensor: {what}",
                "new_ms": times[True],
                "old_ms": times[False],
                "old_over_new": times[False] / times[True],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = input_layer([0.05, 0.10, 0.15, 0.20, 0.25, 0.30], args.rounds)
    rows += digamma_rows(args.rounds)
    rows += adam_rows(args.rounds)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "kernels.csv", index=False)
    md = (
        "# scvae's kernels against the torch code they replace\n\n"
        f"{CELLS} cells × {GENES:,} genes, width {WIDTH}, {args.threads} torch thread(s), torch {torch.__version__}; "
        f"medians over {args.rounds} rounds. `new_ms`: scvae's kernel (input layer on the non-zero entries, "
        "scvae's digamma, fused Adam); `old_ms`: the plain torch code (dense product, `torch.digamma`, per-tensor "
        "Adam); `old_over_new` > 1: scvae's is faster.\n\n"
        f"Command: `python benchmarks/kernels.py --rounds {args.rounds} --threads {args.threads}`\n\n"
        + markdown_table(df, ".3f")
        + "\n"
    )
    (args.out / "kernels.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
