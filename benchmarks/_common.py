"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table of ``df`` (no dependency on tabulate)."""

    def fmt(v) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def seed_tables(df: pd.DataFrame, scores: Sequence[str], rows: Sequence[str]) -> list[str]:
    """One markdown section per score of a screen's rows (columns ``cell_type``, ``seed``, ``method`` and the
    scores): mean over seeds (max − min) per cell type and method, in the order ``rows`` and of first appearance,
    with the mean over types last. Distances: lower is better; interval widths: narrower at the same coverage;
    the rest: higher."""
    methods = list(dict.fromkeys(df["method"]))
    parts = []
    for score in scores:
        g = df.groupby(["cell_type", "method"])[score]
        cell = (g.mean().map("{:.3f}".format) + " (" + (g.max() - g.min()).map("{:.3f}".format) + ")").unstack()
        cell = cell.loc[list(rows), methods]
        means = df.groupby("method")[score].mean()
        cell.loc["mean over types"] = [f"{means[m]:.3f}" for m in methods]
        better = "lower is better" if "distance" in score else "higher is better"
        better = "narrower at the same coverage" if "width" in score else better
        parts.append(f"## {score} ({better})\n\n" + markdown_table(cell.rename_axis("cell_type").reset_index()) + "\n")
    return parts


def synthetic_model(n_cells: int, n_genes: int = 2000, seed: int = 0) -> tuple[np.random.Generator, dict]:
    """The generative model of :func:`synthetic_blocks` for ``seed``: 10 cell types on a rank-10 structure, 4 batches
    with gene-wise batch effects and depth shifts, gene-wise dispersion, each cell's type and batch. Returns the
    random generator, ready for the per-cell draws, and the parameters."""
    rng = np.random.default_rng(seed)
    n_types, n_batches, rank = 10, 4, 10
    params = {
        "loadings": rng.normal(0.0, 1.2 / np.sqrt(rank), (rank, n_genes)),
        "centers": rng.normal(0.0, 1.0, (n_types, rank)),
        "base": rng.normal(0.0, 1.5, n_genes),  # gene-wise baseline log-expression
        "batch_effect": rng.normal(0.0, 0.25, (n_batches, n_genes)),
        "batch_depth": np.linspace(-0.2, 0.2, n_batches),  # batches differ in sequencing depth
        "theta": np.exp(rng.normal(np.log(3.0), 0.7, n_genes)),
        "types": rng.integers(0, n_types, n_cells),
        "batches": rng.integers(0, n_batches, n_cells),
    }
    return rng, params


def synthetic_obs(types: np.ndarray, batches: np.ndarray, start: int = 0) -> pd.DataFrame:
    """``cell_type`` and ``batch`` labels (categoricals) of cells ``start``, ``start + 1``, … of a synthetic set."""
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(types, categories=[f"type{i}" for i in range(10)]),
            "batch": pd.Categorical.from_codes(batches, categories=[f"batch{i}" for i in range(4)]),
        },
        index=[f"cell{i}" for i in range(start, start + len(types))],
    )


def synthetic_blocks(
    n_cells: int, n_genes: int = 2000, seed: int = 0, chunk: int = 10_000
) -> Iterator[tuple[sp.csr_matrix, pd.DataFrame]]:
    """Seeded NB counts in blocks of ``chunk`` cells (so that any number of cells can be written without holding
    them all), drawn from :func:`synthetic_model`: log-normal library sizes around 500; about 90 % zeros; no empty
    cells.

    Yields (CSR float32 counts with integer values, obs with ``cell_type`` and ``batch``) per block."""
    rng, m = synthetic_model(n_cells, n_genes, seed)
    rank = m["loadings"].shape[0]
    for start in range(0, n_cells, chunk):
        t, b = m["types"][start : start + chunk], m["batches"][start : start + chunk]
        z = m["centers"][t] + rng.normal(0.0, 0.3, (len(t), rank))
        eta = m["base"] + z @ m["loadings"] + m["batch_effect"][b]
        rho = np.exp(eta - eta.max(1, keepdims=True))
        rho /= rho.sum(1, keepdims=True)
        lib = np.exp(rng.normal(np.log(500.0) + m["batch_depth"][b], 0.5))
        mu = lib[:, None] * rho
        x = rng.poisson(rng.gamma(m["theta"], mu / m["theta"]))
        empty = x.sum(1) == 0
        x[empty, rng.integers(0, n_genes, int(empty.sum()))] = 1  # no empty cells (count models refuse them)
        yield sp.csr_matrix(x.astype(np.float32)), synthetic_obs(t, b, start)


def install_epoch_clock() -> list[float]:
    """Make every Lightning ``Trainer`` made from now on (scvae builds its own) record the time each training epoch
    starts and the time training ends, in the list returned: the training loop's time is ``last - first``."""
    import time

    import lightning.pytorch as pl

    starts: list[float] = []

    class Clock(pl.Callback):
        def on_train_epoch_start(self, trainer, plan) -> None:
            starts.append(time.perf_counter())

        def on_train_end(self, trainer, plan) -> None:
            starts.append(time.perf_counter())

    base = pl.Trainer

    class ClockedTrainer(base):
        def __init__(self, *args, callbacks=None, **kwargs) -> None:
            super().__init__(*args, callbacks=[*(callbacks or []), Clock()], **kwargs)

    pl.Trainer = ClockedTrainer
    return starts


def machine() -> str:
    """The device results were measured on, for a result file's header: the GPU, or the CPU's model and cores."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores)"
