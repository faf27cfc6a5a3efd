"""What a newcomer runs first: the README quickstart (as written) and the tutorials (headless)."""

import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import pytest

import scvae

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_quickstart_runs_as_written_and_integrates_batches():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    matplotlib.use("Agg")
    scope: dict = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    adata = scope["adata"]
    assert "X_scvae" in adata.obsm and "leiden" in adata.obs and "X_umap" in adata.obsm
    # The batch-aware latent keeps cell lines apart and mixes the five batches (and the three technologies) within
    # each line; the thresholds sit below what benchmarks/docs_timing.py measures on this very code
    # (benchmarks/results/docs_timing.md).
    singlet = adata.obs["is_singlet"].to_numpy()
    acc = scvae.metrics.knn_accuracy(adata.obsm["X_scvae"][singlet], adata.obs["cell_type"][singlet])
    mix = scvae.metrics.batch_mixing(adata.obsm["X_scvae"], adata.obs["batch"], labels=adata.obs["cell_type"])
    tech = scvae.metrics.batch_mixing(adata.obsm["X_scvae"], adata.obs["tech"], labels=adata.obs["cell_type"])
    assert acc > 0.97, acc
    assert mix > 0.93, mix
    assert tech > 0.76, tech


# What each tutorial must print and draw, even in its fast mode (short training: the structure, not the figures).
EXPECTED = {
    "01_quickstart.py": ([r"scvae\s+k-NN accuracy [01]\.\d{3}\s+batch mixing \d\.\d\d"], ["01_history", "01_umap"]),
    "02_perturbation.py": (
        [r"90 % intervals cover the real change of \d+% of the top-100 changed genes", r"scvae \(default\)\s+0\.\d+"],
        ["02_scores", "02_intervals", "02_reg_mean", "02_violin"],
    ),
    "03_objectives_and_priors.py": ([r"IWAE K=5\s+-\d+\.\d+", r"VampPrior\s+-\d+\.\d+"], ["03_beta", "03_iwae_vamp"]),
    "04_analysis.py": (
        [r"reference latent unchanged: True", r"label transfer accuracy on the Drop-seq cells: 0\.\d{3}"],
        ["04_volcano", "04_markers_dotplot", "04_query_on_reference"],
    ),
}


def test_every_tutorial_has_expectations():
    assert sorted(EXPECTED) == sorted(p.name for p in (ROOT / "tutorials").glob("[0-9]*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_tutorial_runs_headless(script, tmp_path, monkeypatch, capfd):
    """Run in this process (as ``python tutorials/<script>`` would, as ``__main__``): the imports and numba's
    compilation for scanpy's neighbours are paid once for the suite, not once per tutorial. What a tutorial changes
    in the process (torch's threads, the random states, open figures) is put back afterwards."""
    import random

    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    monkeypatch.setenv("SCVAE_TUTORIAL_FAST", "1")
    monkeypatch.chdir(tmp_path)
    threads, states = torch.get_num_threads(), (random.getstate(), np.random.get_state(), torch.get_rng_state())
    started = time.time()
    try:
        runpy.run_path(str(ROOT / "tutorials" / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        plt.close("all")
    stdout = capfd.readouterr().out
    printed, figures = EXPECTED[script]
    for pattern in printed:
        assert re.search(pattern, stdout), f"{script} did not print {pattern!r}:\n{stdout[-3000:]}"
    for name in figures:
        path = ROOT / "tutorials" / "figures" / f"{name}.png"
        assert path.is_file() and path.stat().st_mtime >= started - 1, f"{script} did not draw {path}"


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_code_is_ruff_clean(command):
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "scvae", "tests", "tutorials", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if "No module named ruff" in ruff.stderr:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    assert ruff.returncode == 0, ruff.stdout[-3000:]
