"""Training from a backed (on-disk) .h5ad larger than the memory a process may use.

    python benchmarks/backed_training.py [--cells 1500000] [--limit-gb 2] [--epochs 1]   # as root, for the cap

1. Writes seeded synthetic NB counts (``--cells`` × 2,000 genes, 10 cell types, 4 batches; see
   ``_common.synthetic_blocks``) to an .h5ad block by block, never holding the matrix whole (CSR, uncompressed).
2. In a subprocess whose memory is capped at ``--limit-gb`` by the kernel, opens it with ``anndata.read_h5ad(path, backed="r")`` and runs ``scvae.model.fit(adata, batch_key="batch")``
   for ``--epochs`` epochs: checks, training, validation and the latent space all read X block by block.
3. In another subprocess under the same cap, loads the same file into memory (``read_h5ad(path)``), which is
   what training without backed mode needs first; this is expected to fail (killed by the kernel).

The cap is a memory cgroup (``memory.limit_in_bytes`` of cgroup v1 or ``memory.max`` of v2; needs root): resident
memory plus page cache, the cache being reclaimed under pressure. Where no cgroup can be made, the cap falls back
to ``RLIMIT_AS``, a cap on address space, which torch and glibc reserve well beyond what they use (a looser test).

Prints a table and writes ``backed_training.csv`` and ``.md`` to ``--out`` (default ``benchmarks/results``):
the file and in-memory sizes of X, the cap, each run's outcome, peak resident memory (VmHWM) and peak address
space (VmPeak), s/epoch and cells/s, the validation ELBO and the k-NN (k=15) cell-type accuracy of the latent
space on 20,000 random cells.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import install_epoch_clock, markdown_table, synthetic_blocks

OUT = Path(__file__).resolve().parent / "results"
N_GENES = 2000


def write_backed_file(path: Path, n_cells: int, seed: int) -> None:
    """An .h5ad with X as CSR, written one block of cells at a time."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp

    obs = []
    with h5py.File(path.with_suffix(".tmp"), "w") as f:
        data = f.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 20,))
        indices = f.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 20,))
        indptr = [np.zeros(1, np.int64)]
        for x, o in synthetic_blocks(n_cells, N_GENES, seed, chunk=20_000):
            n = data.shape[0]
            data.resize((n + x.nnz,))
            indices.resize((n + x.nnz,))
            data[n:] = x.data
            indices[n:] = x.indices
            indptr.append(x.indptr[1:].astype(np.int64) + n)
            obs.append(o)
        indptr_all = np.concatenate(indptr)
    obs_all = pd.concat(obs)
    var = pd.DataFrame(index=[f"gene{i}" for i in range(N_GENES)])
    # obs, var and an empty X written by anndata, then X replaced by the blocks written above
    ad.AnnData(sp.csr_matrix((n_cells, N_GENES), dtype=np.float32), obs=obs_all, var=var).write_h5ad(path)
    with h5py.File(path, "r+") as f, h5py.File(path.with_suffix(".tmp"), "r") as tmp:
        del f["X"]
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, N_GENES)})
        for name in ("data", "indices"):
            out = g.create_dataset(name, tmp[name].shape, tmp[name].dtype, chunks=(1 << 20,))
            for a in range(0, tmp[name].shape[0], 1 << 24):
                out[a : a + (1 << 24)] = tmp[name][a : a + (1 << 24)]
        g.create_dataset("indptr", data=indptr_all)
    path.with_suffix(".tmp").unlink()


def _mem() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) / 2**10 for k in ("VmHWM", "VmPeak")}


def make_cgroup(limit_gb: float) -> Path | None:
    """A memory cgroup limited to ``limit_gb`` (v1 or v2), or None where none can be made (not root, no cgroupfs)."""
    cap = str(int(limit_gb * 2**30))
    for root, limit_file in (
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
        (Path("/sys/fs/cgroup"), "memory.max"),
    ):
        group = root / "scvae_backed_benchmark"
        try:
            group.mkdir(exist_ok=True)
            (group / limit_file).write_text(cap)
            if (root / "memory.memsw.limit_in_bytes").exists():  # v1 with swap accounting: no swap either
                try:
                    (group / "memory.memsw.limit_in_bytes").write_text(cap)
                except OSError:
                    pass
            return group
        except OSError:
            continue
    return None


def child(mode: str, path: str, limit_gb: float, epochs: int, seed: int, cgroup: str) -> dict:
    """Runs in a subprocess, capped at ``limit_gb``: moves itself into ``cgroup``, or caps its address space."""
    if cgroup:
        (Path(cgroup) / "cgroup.procs").write_text(str(os.getpid()))
    else:
        cap = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import anndata as ad
    import torch

    torch.set_num_threads(2)
    result: dict = {"mode": mode}
    t0 = time.perf_counter()
    try:
        if mode == "in_memory_load":
            adata = ad.read_h5ad(path)
            result["outcome"] = f"loaded ({adata.n_obs} cells)"
        else:
            import scvae
            from scvae.metrics import knn_accuracy

            starts = install_epoch_clock()
            adata = ad.read_h5ad(path, backed="r")
            model = scvae.model.fit(
                adata, batch_key="batch", max_epochs=epochs, seed=seed, progress_bar=False, early_stopping=False
            )
            train_cells = round(adata.n_obs * (1 - model.settings.validation_size))
            loop = starts[-1] - starts[0]
            rows = np.random.default_rng(seed).choice(adata.n_obs, min(20_000, adata.n_obs), replace=False)
            result.update(
                outcome="trained",
                s_per_epoch=loop / epochs,
                cells_per_s=train_cells * epochs / loop,
                elbo_validation=float(model.history["elbo_validation"].iloc[-1]),
                knn_cell_type=knn_accuracy(adata.obsm["X_scvae"][rows], adata.obs["cell_type"].to_numpy()[rows]),
                still_backed=bool(adata.isbacked),
            )
    except (MemoryError, RuntimeError) as err:  # RuntimeError: torch's allocator under RLIMIT_AS
        if not isinstance(err, MemoryError) and "allocate" not in str(err):
            raise
        result["outcome"] = f"out of memory ({type(err).__name__})"
    result["wall_s"] = time.perf_counter() - t0
    result.update({"peak_rss_mb": _mem()["VmHWM"], "peak_address_space_mb": _mem()["VmPeak"]})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_500_000)
    parser.add_argument("--limit-gb", type=float, default=2.0, help="memory cap of each run (GB)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "scvae_backed")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "RESULT_JSON", "CGROUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.data_dir / f"synthetic_{args.cells}_seed{args.seed}.h5ad"
    if args.child:
        mode, out, cgroup = args.child
        Path(out).write_text(json.dumps(child(mode, str(path), args.limit_gb, args.epochs, args.seed, cgroup)))
        return

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("backed_training")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        t = time.perf_counter()
        log.info("writing %s (%d cells × %d genes, block by block)", path, args.cells, N_GENES)
        write_backed_file(path, args.cells, args.seed)
        log.info("written in %.0f s", time.perf_counter() - t)
    import h5py

    with h5py.File(path, "r") as f:
        nnz = f["X/data"].shape[0]
    in_memory_gb = (nnz * (4 + 4) + (args.cells + 1) * 8) / 2**30  # float32 values, int32 indices, int64 indptr
    group = make_cgroup(args.limit_gb)
    cap_kind = f"memory cgroup ({group})" if group else "address space (RLIMIT_AS; no memory cgroup could be made)"
    rows = []
    for mode in ("backed_fit", "in_memory_load"):
        result_file = args.data_dir / f"{mode}.json"
        cmd = [
            sys.executable,
            __file__,
            "--cells",
            str(args.cells),
            "--limit-gb",
            str(args.limit_gb),
            "--epochs",
            str(args.epochs),
            "--seed",
            str(args.seed),
            "--data-dir",
            str(args.data_dir),
            "--child",
            mode,
            str(result_file),
            str(group or ""),
        ]
        log.info("running %s under a %.1f GB cap: %s", mode, args.limit_gb, cap_kind)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 and not result_file.exists():
            if proc.returncode == -9:
                outcome = "killed by the kernel (out of memory under the cap)"
            else:
                tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
                outcome = f"failed: {tail[:100]}"
            rows.append({"mode": mode, "outcome": outcome})
            continue
        rows.append(json.loads(result_file.read_text()))
        result_file.unlink()
    df = pd.DataFrame(rows)
    df.insert(1, "cells", args.cells)
    df.insert(2, "file_gb", path.stat().st_size / 2**30)
    df.insert(3, "x_in_memory_gb", in_memory_gb)
    df.insert(4, "memory_cap_gb", args.limit_gb)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "backed_training.csv", index=False)
    md = (
        "# Training from a backed .h5ad larger than the memory allowed\n\n"
        f"Synthetic NB counts, {args.cells:,} cells × {N_GENES} genes ({nnz / args.cells:.0f} non-zeros per cell), "
        f"{args.epochs} epoch(s), batch size 128, `batch_key='batch'`. Each run in a subprocess capped at "
        f"{args.limit_gb} GB: {cap_kind}. X alone takes {in_memory_gb:.2f} GB in memory. Peak RSS is VmHWM; "
        "peak address space VmPeak (reserved, not necessarily used).\n\n"
        f"Command: `python benchmarks/backed_training.py --cells {args.cells} --limit-gb {args.limit_gb} "
        f"--epochs {args.epochs}`\n\n" + markdown_table(df, ".2f") + "\n"
    )
    (args.out / "backed_training.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
