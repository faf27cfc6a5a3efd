"""One epoch over a million cells on one GPU: scvae with the data on the device and from disk, beside scvi-tools.

    python benchmarks/gpu.py [--cells 1000000] [--files 10] [--out benchmarks/results]

1. Draws ``--cells`` × 2,000 synthetic NB counts from the generative model of ``_common.synthetic_model`` (the
   parameters, labels and depths of ``benchmarks/scale.py``'s data for the seed; the per-cell draws are made on the
   GPU, so they are not the same cells as that script's files) and holds them as one CSR AnnData in memory.
2. scvae, ``fit(adata, batch_key="batch", max_epochs=2)`` with every other setting at its default (batch size 128;
   the count matrix is copied to the GPU once and minibatches are cut there), then the same with
   ``batch_size=1024``.
3. Where an epoch goes (the default model's minibatches, after its fit): one pass of the loader alone (cutting the
   minibatches on the GPU), and the same training steps (loss, backward, fused Adam) in a plain loop without
   Lightning, each timed with the GPU synchronised.
4. The same cells from disk: written as ``--files`` .h5ad files, ``fit(open_files(paths), batch_key="batch",
   max_epochs=1)``; minibatches are read block by block on the host and copied to the GPU.
5. scvi-tools on the same cells and GPU, its defaults (``SCVI.setup_anndata(adata, batch_key="batch")``,
   ``SCVI(adata).train(max_epochs=1)``: batch size 128, the minibatches cut from the CSR matrix on the host).

Times: ``train_s``, the training minibatches of one epoch (from the epoch's start to its validation pass, or to its
end where there is none), with the GPU synchronised; ``epoch_s`` adds the validation pass; ``cells_per_s`` is the
training cells over ``train_s``; ``fit_call_s`` the whole call (scvae also checks every count and embeds every
cell; scvi-tools' ``setup_anndata`` is timed apart). Epoch 2 shows the steady state: epoch 1 also pays for
warming up the GPU.

Prints a table and writes ``gpu.csv`` and ``gpu.md`` to ``--out`` (default ``benchmarks/results``), row by row as
each run ends.
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import scipy.sparse as sp
from _common import markdown_table, synthetic_model, synthetic_obs

OUT = Path(__file__).resolve().parent / "results"
N_GENES = 2000
log = logging.getLogger("gpu")


def draw_cells(n_cells: int, seed: int, device: str, chunk: int = 50_000):
    """``n_cells`` × 2,000 NB counts of :func:`_common.synthetic_model` drawn on ``device``, as a CSR AnnData."""
    import anndata as ad
    import torch

    _, m = synthetic_model(n_cells, N_GENES, seed)
    p = {k: torch.as_tensor(m[k], dtype=torch.float32, device=device) for k in m if k not in ("types", "batches")}
    types = torch.as_tensor(m["types"], device=device)
    batches = torch.as_tensor(m["batches"], device=device)
    g = torch.Generator(device).manual_seed(seed)
    parts = []
    for start in range(0, n_cells, chunk):
        t, b = types[start : start + chunk], batches[start : start + chunk]
        z = p["centers"][t] + 0.3 * torch.randn(len(t), p["centers"].shape[1], generator=g, device=device)
        rho = torch.softmax(p["base"] + z @ p["loadings"] + p["batch_effect"][b], dim=1)
        lib = torch.exp(math.log(500.0) + p["batch_depth"][b] + 0.5 * torch.randn(len(t), generator=g, device=device))
        mu = lib[:, None] * rho
        shape = p["theta"].expand_as(mu).contiguous()
        x = torch.poisson(torch._standard_gamma(shape, generator=g) * mu / p["theta"], generator=g)
        empty = torch.nonzero(x.sum(1) == 0).flatten()
        x[empty, torch.randint(0, N_GENES, (len(empty),), generator=g, device=device)] = 1.0  # no empty cells
        csr = x.to_sparse_csr()
        parts.append(
            sp.csr_matrix(
                (
                    csr.values().cpu().numpy(),
                    csr.col_indices().to(torch.int32).cpu().numpy(),
                    csr.crow_indices().to(torch.int64).cpu().numpy(),
                ),
                shape=x.shape,
            )
        )
    obs = synthetic_obs(m["types"], m["batches"])
    var = pd.DataFrame(index=[f"gene{i}" for i in range(N_GENES)])
    return ad.AnnData(sp.vstack(parts, format="csr"), obs=obs, var=var)


def make_clock():
    """A Lightning callback recording, with the GPU synchronised, when each training epoch starts, when its
    validation pass starts and when it ends; and a function that gives the per-epoch times from it."""
    import lightning.pytorch as pl
    import torch

    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.epochs: list[dict[str, float]] = []

        def on_train_epoch_start(self, trainer, plan) -> None:
            self.epochs.append({"start": now()})

        def on_validation_epoch_start(self, trainer, plan) -> None:
            if self.epochs and "validation" not in self.epochs[-1]:
                self.epochs[-1]["validation"] = now()

        def on_train_epoch_end(self, trainer, plan) -> None:
            self.epochs[-1]["end"] = now()

        def times(self) -> list[tuple[float, float]]:
            """(training minibatches, whole epoch) seconds, per epoch."""
            return [(e.get("validation", e["end"]) - e["start"], e["end"] - e["start"]) for e in self.epochs]

    return Clock


def clock_scvae(clock) -> None:
    """Every Lightning ``Trainer`` made from now on (scvae builds its own) carries ``clock``, once (scvi-tools,
    imported later, subclasses the patched class and passes it too)."""
    import lightning.pytorch as pl

    base = pl.Trainer

    class ClockedTrainer(base):
        def __init__(self, *args, callbacks=None, **kwargs) -> None:
            callbacks = list(callbacks or [])
            super().__init__(*args, callbacks=callbacks if clock in callbacks else [*callbacks, clock], **kwargs)

    pl.Trainer = ClockedTrainer


def run_scvae(name: str, cells, n_train: int, epochs: int, clock, **kwargs) -> list[dict]:
    import torch

    import scvae

    clock.epochs.clear()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    model = scvae.model.fit(cells, batch_key="batch", max_epochs=epochs, progress_bar=False, seed=0, **kwargs)
    fit_s = time.perf_counter() - t
    rows = []
    for i, (train_s, epoch_s) in enumerate(clock.times(), 1):
        rows.append(
            {
                "tool": "scvae",
                "run": name,
                "epoch": i,
                "batch_size": model.settings.batch_size,
                "train_s": train_s,
                "epoch_s": epoch_s,
                "cells_per_s": n_train / train_s,
                "fit_call_s": fit_s,
                "elbo_validation": float(model.history["elbo_validation"].iloc[i - 1]),
                "peak_gpu_gb": _peak_gb(),
            }
        )
    return rows, model


def where_time_goes(model, cells, device: str, profile: Path | None = None) -> list[dict]:
    """The default model's training minibatches: the loader alone, and the steps in a plain loop (``profile``: a
    file for a table of 50 of those steps under torch's profiler)."""
    import torch

    from scvae.data import split_indices
    from scvae.loaders import make_loaders

    settings = model.settings
    train_idx, val_idx = split_indices(cells.n_obs, settings.validation_size, settings.seed)
    loader, _ = make_loaders(cells.X, model.labels.encode(cells), train_idx, val_idx, settings.batch_size, seed=0)
    loader.to(device)

    def timed(step) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for batch in loader:
            step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    loader_s = timed(lambda batch: None)
    module = model.module.to(device).train()
    opt = torch.optim.Adam(
        module.parameters(), lr=settings.lr, eps=0.01, weight_decay=settings.weight_decay, fused=True
    )

    def step(batch) -> None:
        loss = module.loss(batch, kl_weight=1.0).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timed(step)  # warm-up pass
    loop_s = timed(step)
    if profile is not None:  # 50 steps under torch's profiler: the kernels and host calls of a step
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        batches = [b for _, b in zip(range(60), loader)]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        for b in batches[:10]:
            step(b)
        with profiler(activities=activities) as prof:
            for b in batches[10:]:
                step(b)
            if device == "cuda":
                torch.cuda.synchronize()
        by = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        averages = prof.key_averages()
        profile.write_text(
            f"50 training steps, batch size {settings.batch_size}, data on {device}\n\n"
            + averages.table(sort_by=by, row_limit=40)
            + "\n\n"
            + averages.table(sort_by="self_cpu_time_total", row_limit=25)
        )
    n, steps = len(train_idx), len(loader)
    common = {"tool": "scvae", "epoch": 2, "batch_size": settings.batch_size}
    return [
        {**common, "run": "loader alone (no model)", "train_s": loader_s, "cells_per_s": n / loader_s},
        {**common, "run": "same steps, plain loop", "train_s": loop_s, "cells_per_s": n / loop_s},
        {**common, "run": f"per step, plain loop (ms, {steps} steps)", "train_s": 1e3 * loop_s / steps},
    ]


def run_scvi(cells, n_train: int, clock, accelerator: str) -> list[dict]:
    import anndata as ad
    import scvi
    import torch

    scvi.settings.seed = 0
    adata = ad.AnnData(cells.X, obs=cells.obs[["cell_type", "batch"]].copy(), var=cells.var.copy())
    clock.epochs.clear()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    setup_s = time.perf_counter() - t
    model = scvi.model.SCVI(adata)
    t = time.perf_counter()
    model.train(max_epochs=1, accelerator=accelerator, callbacks=[clock], enable_progress_bar=False)
    fit_s = time.perf_counter() - t
    train_s, epoch_s = clock.times()[0]
    return [
        {
            "tool": f"scvi-tools {scvi.__version__}",
            "run": f"in memory, defaults (setup_anndata {setup_s:.1f} s)",
            "epoch": 1,
            "batch_size": 128,
            "train_s": train_s,
            "epoch_s": epoch_s,
            "cells_per_s": n_train / train_s,
            "fit_call_s": fit_s,
            "peak_gpu_gb": _peak_gb(),
        }
    ]


def _peak_gb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "scvae_gpu")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--skip", nargs="*", default=[], choices=["batch1024", "where", "disk", "scvi"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from scvae.stores import open_files

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def report(new: list[dict]) -> None:
        rows.extend(new)
        for r in new:
            log.info("%s", {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})
        pd.DataFrame(rows).to_csv(args.out / "gpu.csv", index=False)

    t = time.perf_counter()
    cells = draw_cells(args.cells, seed=0, device=device)
    draw_s = time.perf_counter() - t
    nnz = cells.X.nnz
    log.info("drew %d cells × %d genes (%d non-zeros) in %.1f s on %s", cells.n_obs, N_GENES, nnz, draw_s, name)
    n_train = round(cells.n_obs * 0.9)
    clock = make_clock()()
    clock_scvae(clock)

    new, model = run_scvae("in memory, on the GPU, defaults", cells, n_train, 2, clock)
    report(new)

    def stage(key: str, work) -> None:  # one failing stage is logged and the others still run
        if key in args.skip:
            return
        try:
            report(work())
        except Exception:
            log.exception("stage %s failed", key)

    stage(
        "batch1024",
        lambda: run_scvae("in memory, on the GPU, batch_size=1024", cells, n_train, 2, clock, batch_size=1024)[0],
    )
    stage("where", lambda: where_time_goes(model, cells, device, args.out / "gpu_profile.txt"))

    def from_disk() -> list[dict]:
        directory = args.data_dir / f"{args.cells}_{args.files}"
        directory.mkdir(parents=True, exist_ok=True)
        per = math.ceil(cells.n_obs / args.files)
        paths = []
        t = time.perf_counter()
        for i in range(args.files):
            paths.append(directory / f"part{i:02d}.h5ad")
            cells[i * per : (i + 1) * per].write_h5ad(paths[-1])
        log.info("wrote %d files in %.1f s", args.files, time.perf_counter() - t)
        return run_scvae(f"from disk, {args.files} .h5ad files", open_files(paths), n_train, 1, clock)[0]

    stage("disk", from_disk)
    stage("scvi", lambda: run_scvi(cells, n_train, clock, "gpu" if device == "cuda" else "cpu"))

    df = pd.DataFrame(rows)
    cols = [
        c
        for c in ("tool", "run", "epoch", "batch_size", "train_s", "epoch_s", "cells_per_s", "fit_call_s")
        + ("elbo_validation", "peak_gpu_gb")
        if c in df
    ]
    md = (
        "# One epoch over a million cells on one GPU\n\n"
        f"{name}, torch {torch.__version__}. Synthetic NB counts, {cells.n_obs:,} cells × {N_GENES} genes "
        f"({nnz / cells.n_obs:.0f} non-zeros per cell; drawn on the device in {draw_s:.0f} s), 90 % of them "
        "training cells. What each row is: the docstring of `benchmarks/gpu.py`.\n\n"
        f"Command: `python benchmarks/gpu.py --cells {args.cells} --files {args.files}`\n\n"
        + markdown_table(df[cols], ".2f")
        + "\n"
    )
    (args.out / "gpu.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
