"""Multi-process training through Lightning's DDP: two CPU processes (gloo) give a model as good as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_fit.py")


def _run(tmp_path: Path, devices: int, lr: float) -> dict:
    out = tmp_path / f"ddp_{devices}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(devices), str(lr)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP test written for Linux")
def test_ddp_with_two_cpu_processes_matches_one_process(tmp_path):
    one = _run(tmp_path, 1, 1e-3)
    # each process takes batch_size cells per step: twice the cells per step, half the steps per epoch; the
    # learning rate is doubled with them (the linear scaling rule), as fit's docstring advises
    two = _run(tmp_path, 2, 2e-3)
    assert one["world_size"] == 1 and two["world_size"] == 2
    # KL warm-up is counted in epochs, whatever the number of steps each process takes per epoch
    assert two["kl_weight_first_epochs"] == pytest.approx(one["kl_weight_first_epochs"])
    assert two["knn"] > 0.75 and two["knn"] > one["knn"] - 0.04, (one, two)
    assert abs(two["elbo_validation"] - one["elbo_validation"]) < 4, (one, two)
