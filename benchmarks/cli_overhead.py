"""Wall time of ``scvae fit`` from the shell against the same fit from Python, on the bundled CellBench data.

Three timings, one after the other (never concurrently):

- ``cli``: ``scvae fit data/cellbench_counts_hvg3000.h5ad -o OUT --batch-key batch --max-epochs N -q`` as a
  subprocess (start-up, reading the file, training, writing the output);
- ``python``: in this process, ``anndata.read_h5ad`` + ``scvae.model.fit`` with the same arguments +
  ``write_h5ad`` (scvae already imported);
- ``startup``: ``scvae --version`` as a subprocess, which imports the same modules a command imports before it
  starts working (Python, scvae, and torch/Lightning/anndata when the command runs).

The command line should cost no more than its start-up: cli − python ≈ startup.

    python benchmarks/cli_overhead.py [--max-epochs 50] [--repeats 2]

Writes ``benchmarks/results/cli_overhead.md``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import pandas as pd
from _common import markdown_table

import scvae

OUT = Path(__file__).resolve().parent / "results"


def _cli() -> list[str]:
    return [shutil.which("scvae")] if shutil.which("scvae") else [sys.executable, "-m", "scvae.cli"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT / "cli_overhead")
    args = p.parse_args(argv)
    data = scvae.datasets.data_dir() / "cellbench_counts_hvg3000.h5ad"
    work = Path(tempfile.mkdtemp(prefix="scvae_cli_"))
    rows = []
    for rep in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([*_cli(), "--version"], check=True, capture_output=True)
        version_s = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run(
            [
                *_cli(),
                "fit",
                str(data),
                "-o",
                str(work / f"cli{rep}.h5ad"),
                "--batch-key",
                "batch",
                "--max-epochs",
                str(args.max_epochs),
                "-q",
            ],
            check=True,
        )
        cli_s = time.perf_counter() - start
        start = time.perf_counter()
        adata = ad.read_h5ad(data)
        scvae.model.fit(adata, batch_key="batch", max_epochs=args.max_epochs, progress_bar=False)
        adata.write_h5ad(work / f"py{rep}.h5ad")
        py_s = time.perf_counter() - start
        same = (ad.read_h5ad(work / f"cli{rep}.h5ad").obsm["X_scvae"] == adata.obsm["X_scvae"]).all()
        rows.append(
            {
                "repeat": rep,
                "cli_s": cli_s,
                "python_s": py_s,
                "cli_minus_python_s": cli_s - py_s,
                "scvae_version_startup_s": version_s,
                "same_latent": bool(same),
            }
        )
    shutil.rmtree(work)
    tab = pd.DataFrame(rows)
    startup = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; t = time.perf_counter(); import scvae.cli, scvae.model; "
            "print(f'{time.perf_counter() - t:.2f}')",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    text = "\n".join(
        [
            "# scvae fit: command line vs Python",
            "",
            f"CellBench bundled file (1,408 cells × 3,000 genes), batch_key=batch, max_epochs={args.max_epochs}, seed 0. "
            "cli_s: the whole `scvae fit` subprocess; python_s: read_h5ad + scvae.model.fit + write_h5ad in a process "
            "that has already imported scvae; scvae_version_startup_s: `scvae --version` (interpreter start-up only). "
            "same_latent: the two runs wrote bit-identical X_scvae.",
            "",
            markdown_table(tab),
            "",
            f"Importing scvae (torch, Lightning, anndata, scanpy included) in a fresh interpreter: {startup} s.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
