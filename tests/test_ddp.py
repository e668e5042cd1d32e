"""Two processes on the CPU (gloo): training, then validation that counts every image once."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_tiny_config
from tests.test_data import write_cifar100


def run(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "ssal.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_two_process_ddp_fit_and_validate_match_single_process(tmp_path):
    write_cifar100(tmp_path / "data", n_train=400, n_test=101)  # odd: uneven shares
    config = write_tiny_config(
        tmp_path / "ddp.yaml",
        tmp_path / "data",
        trainer={"devices": 2, "strategy": "ddp"},
        data={"batch_size": 16, "eval_batch_size": 8},
        model={"groupings": {"source": "cifar100-superclasses"}},
    )
    run(tmp_path, "fit", "--config", str(config))
    runs = sorted((tmp_path / "runs/ssal").iterdir())
    assert [p.name for p in runs] == ["version_0"]  # logs and checkpoints written once
    ckpt = runs[0] / "checkpoints/last.ckpt"
    assert ckpt.is_file()

    run(tmp_path, "validate", "--config", str(config), "--ckpt_path", str(ckpt))
    with open(tmp_path / "runs/ssal/version_1/metrics.csv") as f:
        row = [r for r in csv.DictReader(f) if r.get("val/acc_fine")][-1]

    out = tmp_path / "single.json"
    run(tmp_path, "evaluate", "--checkpoint", str(ckpt), "--json", str(out), "--device", "cpu")
    single = json.loads(out.read_text())
    assert single["num_samples"] == 101
    assert float(row["val/num_samples"]) == 101  # no image dropped or counted twice
    assert float(row["val/acc_fine"]) == pytest.approx(single["fine_accuracy"], abs=1e-6)
    assert float(row["val/acc_joint"]) == pytest.approx(single["joint_accuracy"], abs=1e-6)
