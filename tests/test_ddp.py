"""Two processes on the CPU (gloo): training, then validation that counts every image once."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    config = tmp_path / "ddp.yaml"
    config.write_text(
        f"""
seed_everything: 0
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 2
  strategy: ddp
  enable_progress_bar: false
  enable_model_summary: false
data:
  class_path: ssal.data.InMemoryDataModule
  init_args: {{dataset: cifar100, data_dir: {tmp_path / "data"}, batch_size: 16,
              eval_batch_size: 8, heldout: 0.2}}
model:
  model: tiny-wrn
  groupings: cifar100-superclasses
  lr: 0.05
  warmup_epochs: 1
"""
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
