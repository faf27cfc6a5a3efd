"""Multi-process training through Lightning's DDP: two CPU processes (gloo) give a model as good as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_fit.py")


def _result(out: Path, devices: int, files: list[Path]) -> dict:
    result = json.loads(out.read_text())
    if files:
        result["rows_read"] = [json.loads(Path(f"{out}.rank{r}").read_text())["rows_read"] for r in range(devices)]
    return result


def _run(tmp_path: Path, devices: int, lr: float, files: list[Path] = (), torchrun: bool = False) -> dict:
    """Train with ``devices`` CPU processes: started by Lightning, or by ``torchrun`` (the README's recipe)."""
    out = tmp_path / f"ddp_{devices}_{len(files)}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launch = [sys.executable]
    if torchrun:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}"]
    proc = subprocess.run(
        [*launch, str(SCRIPT), str(out), str(devices), str(lr), *map(str, files)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _result(out, devices, files)


def _one_process(tmp_path: Path, lr: float, monkeypatch, files: list[Path] = ()) -> dict:  # noqa: ANN001
    """The single-process reference, trained in this process by the same script (no interpreter to start);
    what the script changes here (the loader's block size and read counter, torch's threads) is put back."""
    import torch

    import scvae.loaders

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import ddp_fit

    monkeypatch.setattr(scvae.loaders.BackedRows, "read", scvae.loaders.BackedRows.read)
    monkeypatch.setattr(scvae.loaders, "BLOCK_ROWS", scvae.loaders.BLOCK_ROWS)
    monkeypatch.setattr(ddp_fit, "ROWS_READ", [0])
    out, threads = tmp_path / f"ddp_1_{len(files)}.json", torch.get_num_threads()
    try:
        ddp_fit.main(str(out), 1, lr, list(map(str, files)))
    finally:
        torch.set_num_threads(threads)
    return _result(out, 1, files)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP test written for Linux")
def test_ddp_with_two_cpu_processes_matches_one_process(tmp_path, monkeypatch):
    one = _one_process(tmp_path, 1e-3, monkeypatch)
    # each process takes batch_size cells per step: twice the cells per step, half the steps per epoch; the
    # learning rate is doubled with them (the linear scaling rule), as fit's docstring advises
    two = _run(tmp_path, 2, 2e-3)
    assert one["world_size"] == 1 and two["world_size"] == 2
    # KL warm-up is counted in epochs, whatever the number of steps each process takes per epoch
    assert two["kl_weight_first_epochs"] == pytest.approx(one["kl_weight_first_epochs"])
    assert two["knn"] > 0.75 and two["knn"] > one["knn"] - 0.04, (one, two)
    assert abs(two["elbo_validation"] - one["elbo_validation"]) < 4, (one, two)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP test written for Linux")
def test_ddp_on_a_collection_of_files_reads_each_rank_its_own_share(tmp_path, monkeypatch):
    """Two processes started by torchrun on three backed files (read in blocks of 50 rows): each reads its own
    share of the blocks, not the whole matrix, and the model is as good as the single-process one. Measured (700 cells, 40 epochs): one
    process 30,760 rows; two 21,347 and 17,861: each a half, plus the one validation minibatch that both ranks
    evaluate and the blocks at the edges of its share."""
    import scvae

    adata = scvae.datasets.pbmc68k()
    files = [tmp_path / f"part{i}.h5ad" for i in range(3)]
    for path, rows in zip(files, (slice(0, 250), slice(250, 500), slice(500, None))):
        adata[rows].copy().write_h5ad(path)
    one = _one_process(tmp_path, 1e-3, monkeypatch, files)
    two = _run(tmp_path, 2, 2e-3, files, torchrun=True)
    assert two["world_size"] == 2
    single = one["rows_read"][0]
    assert single >= 40 * 600  # every training and validation cell, every epoch
    assert all(r < 0.75 * single for r in two["rows_read"]), (one["rows_read"], two["rows_read"])
    assert sum(two["rows_read"]) < 1.35 * single  # together about one pass, not one pass each
    assert two["knn"] > 0.7 and two["knn"] > one["knn"] - 0.05, (one, two)
    assert abs(two["elbo_validation"] - one["elbo_validation"]) < 5, (one, two)
