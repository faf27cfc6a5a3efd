"""Training from disk at atlas scale: several .h5ad files and one zarr store, against training in memory.

    python benchmarks/scale.py [--cells 1000000] [--files 10] [--limit-gb 2.5] [--seeds 0 1 2]   # as root

1. Writes seeded synthetic NB counts (``--cells`` × 2,000 genes, 10 cell types, 4 batches; see
   ``_common.synthetic_blocks``) block by block as ``--files`` .h5ad files of equal size (CSR, uncompressed) and the
   same cells as one zarr store (CSR, zarr's default compression), never holding the matrix whole.
2. Each run is a subprocess under a memory cap of ``--limit-gb`` (a memory cgroup, see ``backed_training.py``),
   ``torch`` on 2 threads, ``fit(cells, batch_key="batch", max_epochs=1)`` with every other setting at its
   default, and reports: peak resident memory (VmHWM), the time of the training loop (the epoch with its
   validation pass) and cells/s over the training cells, the time of the whole ``fit`` call (it also checks every
   count and embeds every cell), the held-out ELBO, and the loader's share of an epoch: one more pass of the
   same training minibatches with no model, over the epoch's time.
   - growth: collections of the first k files (100k → all cells);
   - the zarr store (all cells);
   - in memory: the first ``--slice`` cells read into memory, and the same cells from disk (their files as a
     collection), each over ``--seeds`` (the held-out ELBO compared within the seed spread).

The files are read through the page cache (the machine's memory holds them), as they would be on a node with
enough memory for the cache but not for the process; the cap counts the cache too, which the kernel reclaims.

Prints a table and writes ``scale.csv`` and ``scale.md`` to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import install_epoch_clock, markdown_table, synthetic_blocks
from backed_training import N_GENES, _mem, make_cgroup

OUT = Path(__file__).resolve().parent / "results"


def write_files(directory: Path, n_cells: int, n_files: int, seed: int) -> tuple[list[Path], Path, int]:
    """``n_files`` .h5ad files and one zarr store holding the same synthetic cells; returns their paths and nnz."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp
    import zarr

    per = n_cells // n_files
    paths = [directory / f"part{i:02d}.h5ad" for i in range(n_files)]
    store = directory / "all.zarr"
    blocks = synthetic_blocks(n_cells, N_GENES, seed, chunk=20_000)
    var = pd.DataFrame(index=[f"gene{i}" for i in range(N_GENES)])
    pending: list[tuple[sp.csr_matrix, pd.DataFrame]] = []
    obs_all, nnz = [], 0
    for path in paths:
        rows = 0
        chunks = []
        while rows < per:
            x, o = pending.pop() if pending else next(blocks)
            take = min(per - rows, x.shape[0])
            if take < x.shape[0]:
                pending.append((x[take:], o.iloc[take:]))
                x, o = x[:take], o.iloc[:take]
            chunks.append((x, o))
            rows += take
        x = sp.vstack([c[0] for c in chunks], format="csr")
        obs = pd.concat([c[1] for c in chunks])
        ad.AnnData(x, obs=obs, var=var).write_h5ad(path)
        obs_all.append(obs)
        nnz += x.nnz
    # the zarr store: obs and var written by anndata, X as CSR arrays filled file by file
    obs = pd.concat(obs_all)
    ad.AnnData(sp.csr_matrix((len(obs), N_GENES), dtype=np.float32), obs=obs, var=var).write_zarr(store)
    group = zarr.open_group(str(store), mode="r+")
    del group["X"]
    x_group = group.create_group("X")
    x_group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [len(obs), N_GENES]})
    data = x_group.create_array("data", shape=(nnz,), dtype="float32", chunks=(1 << 20,))
    indices = x_group.create_array("indices", shape=(nnz,), dtype="int32", chunks=(1 << 20,))
    indptr = np.zeros(len(obs) + 1, dtype=np.int64)
    at, row = 0, 0
    for path in paths:
        with h5py.File(path, "r") as f:
            n = f["X/data"].shape[0]
            data[at : at + n] = f["X/data"][:]
            indices[at : at + n] = f["X/indices"][:]
            p = f["X/indptr"][:]
            indptr[row + 1 : row + len(p)] = p[1:] + at
            at, row = at + n, row + len(p) - 1
    x_group.create_array("indptr", data=indptr, chunks=(1 << 20,))
    zarr.consolidate_metadata(str(store))  # anndata reads the consolidated metadata: it must list the new X
    return paths, store, nnz


def child(spec: dict) -> dict:
    """One run, in a subprocess under the cap."""
    if spec["cgroup"]:
        (Path(spec["cgroup"]) / "cgroup.procs").write_text(str(__import__("os").getpid()))
    import anndata as ad
    import torch

    import scvae
    from scvae.loaders import make_loaders
    from scvae.stores import collection_matrix, open_files, open_zarr

    torch.set_num_threads(2)
    starts = install_epoch_clock()
    source = spec["source"]
    if source == "memory":
        cells = ad.concat([ad.read_h5ad(p) for p in spec["paths"]])
        cells.obs_names_make_unique()
    elif source == "zarr":
        cells = open_zarr(spec["paths"][0])
    else:
        cells = open_files(spec["paths"])
    t0 = time.perf_counter()
    model = scvae.model.fit(cells, batch_key="batch", max_epochs=1, seed=spec["seed"], progress_bar=False)
    fit_s = time.perf_counter() - t0
    loop = starts[-1] - starts[0]
    n_train = round(cells.n_obs * (1 - model.settings.validation_size))
    result = {
        "run": spec["run"],
        "source": source,
        "cells": int(cells.n_obs),
        "seed": spec["seed"],
        "epoch_s": loop,
        "cells_per_s": n_train / loop,
        "fit_call_s": fit_s,
        "elbo_validation": float(model.history["elbo_validation"].iloc[-1]),
    }
    if spec.get("loader_share"):  # the same training minibatches once more, with no model
        x = cells.X if source != "collection" else collection_matrix(cells, None)
        codes = model.labels.encode(cells)
        from scvae.data import split_indices

        train_idx, val_idx = split_indices(cells.n_obs, model.settings.validation_size, spec["seed"])
        loader, _ = make_loaders(x, codes, train_idx, val_idx, model.settings.batch_size, seed=spec["seed"])
        t = time.perf_counter()
        for _ in loader:
            pass
        result["loader_s"] = time.perf_counter() - t
        result["loader_share"] = result["loader_s"] / loop
    result["peak_rss_gb"] = _mem()["VmHWM"] / 2**10
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--slice", type=int, default=200_000, help="cells trained on in memory")
    parser.add_argument("--limit-gb", type=float, default=2.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "scvae_scale")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        Path(args.child).write_text(json.dumps(child(spec)))
        return

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("scale")
    directory = args.data_dir / f"{args.cells}_{args.files}"
    directory.mkdir(parents=True, exist_ok=True)
    done = directory / "written.json"
    if not done.exists():
        t = time.perf_counter()
        log.info("writing %d cells × %d genes as %d .h5ad files and one zarr store", args.cells, N_GENES, args.files)
        paths, store, nnz = write_files(directory, args.cells, args.files, seed=0)
        done.write_text(json.dumps({"nnz": nnz, "seconds": time.perf_counter() - t}))
    written = json.loads(done.read_text())
    paths = sorted(directory.glob("part*.h5ad"))
    store = directory / "all.zarr"
    per = args.cells // args.files
    group = make_cgroup(args.limit_gb)
    cap = f"memory cgroup of {args.limit_gb} GB" if group else "none (no memory cgroup could be made)"

    runs = []
    sizes = {100_000 // per, 200_000 // per, len(paths) // 2, len(paths)}
    for k in sorted({min(max(1, k), len(paths)) for k in sizes}):
        runs.append({"run": "growth", "source": "collection", "paths": paths[:k], "seed": 0, "loader_share": True})
    runs.append({"run": "zarr", "source": "zarr", "paths": [store], "seed": 0, "loader_share": True})
    k = max(1, args.slice // per)
    for seed in args.seeds:
        runs.append({"run": "slice", "source": "memory", "paths": paths[:k], "seed": seed, "loader_share": seed == 0})
        runs.append({"run": "slice", "source": "collection", "paths": paths[:k], "seed": seed})
    rows = []
    for spec in runs:
        spec = {**spec, "paths": [str(p) for p in spec["paths"]], "cgroup": str(group or "")}
        job = directory / "run.json"
        job.write_text(json.dumps(spec))
        log.info("run %s from %s, %d files, seed %d", spec["run"], spec["source"], len(spec["paths"]), spec["seed"])
        proc = subprocess.run([sys.executable, __file__, "--child", str(job)], capture_output=True, text=True)
        if proc.returncode != 0:
            outcome = "killed (out of memory under the cap)" if proc.returncode == -9 else proc.stderr[-300:]
            rows.append({"run": spec["run"], "source": spec["source"], "outcome": outcome})
            log.info("  failed: %s", outcome)
            continue
        rows.append({**json.loads(job.read_text()), "outcome": "trained"})
        log.info("  %s", rows[-1])
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "scale.csv", index=False)

    slice_ = df[df.run == "slice"].groupby("source")
    summary = slice_.agg(
        cells_per_s=("cells_per_s", "mean"),
        elbo_mean=("elbo_validation", "mean"),
        elbo_sd=("elbo_validation", "std"),
        peak_rss_gb=("peak_rss_gb", "max"),
    ).reset_index()
    ratio = float(
        summary.set_index("source").loc["collection", "cells_per_s"]
        / summary.set_index("source").loc["memory", "cells_per_s"]
    )
    full = df[(df.run != "slice")].copy()
    md = (
        "# Training from disk at atlas scale\n\n"
        f"Synthetic NB counts, {args.cells:,} cells × {N_GENES} genes ({written['nnz'] / args.cells:.0f} non-zeros "
        f"per cell) in {args.files} .h5ad files of {per:,} cells and one zarr store; `fit(cells, batch_key='batch', "
        f"max_epochs=1)`, other settings default (batch size 128), torch on 2 CPU threads. Memory cap: {cap}. "
        "`epoch_s`: the training loop (one epoch and its validation pass); `fit_call_s`: the whole call, which also "
        "checks every count and embeds every cell; `loader_share`: one pass of the same training minibatches with no "
        "model, over `epoch_s`. The files were read through the page cache.\n\n"
        f"Command: `python benchmarks/scale.py --cells {args.cells} --files {args.files} --slice {args.slice} "
        f"--limit-gb {args.limit_gb} --seeds {' '.join(map(str, args.seeds))}`\n\n"
        "## Growth and the zarr store\n\n"
        + markdown_table(
            full[
                [
                    c
                    for c in (
                        "source",
                        "cells",
                        "epoch_s",
                        "cells_per_s",
                        "fit_call_s",
                        "loader_share",
                        "peak_rss_gb",
                        "elbo_validation",
                        "outcome",
                    )
                    if c in full
                ]
            ],
            ".2f",
        )
        + f"\n\n## The first {args.slice:,} cells: in memory against the same cells from disk ({len(args.seeds)} seeds)\n\n"
        + markdown_table(summary, ".2f")
        + f"\n\nFrom disk at {ratio:.2f}× the in-memory cells/s; held-out ELBO difference "
        f"{summary.set_index('source').loc['collection', 'elbo_mean'] - summary.set_index('source').loc['memory', 'elbo_mean']:+.2f} "
        "nats per cell against the seed spreads above.\n"
    )
    (args.out / "scale.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
