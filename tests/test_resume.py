"""Runs survive being killed: resume after SIGKILL mid-epoch, and during a checkpoint save."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssal.checkpoint import read_checkpoint
from ssal.data import DEFAULT_FASHION_MNIST_DIR
from tests.conftest import write_tiny_config

HAVE_FMNIST = (Path(DEFAULT_FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz").is_file()
EPOCHS, TRAIN, BATCH = 3, 3000, 64


def write_config(tmp: Path) -> Path:
    return write_tiny_config(
        tmp / "run.yaml",
        trainer={"max_epochs": EPOCHS, "log_every_n_steps": 10},
        data={
            "dataset": "fashion-mnist",
            "train_size": TRAIN,
            "batch_size": BATCH,
            "eval_batch_size": 1000,
            "heldout": 0.1,
            "max_shift": 2,
        },
        model={"network": {"name": "small-cnn"}, "optim": {"nesterov": True}},
    )


def ssal_fit(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssal.cli", "fit", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def val_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("val/acc_fine")]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_sigkill_mid_epoch_then_resume_last(tmp_path):
    config = write_config(tmp_path)
    a, b = tmp_path / "killed", tmp_path / "straight"
    a.mkdir()
    b.mkdir()
    straight = ssal_fit(b, "--config", str(config))
    proc = ssal_fit(a, "--config", str(config))
    last = a / "runs/ssal/version_0/checkpoints/last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert last.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint"
    time.sleep(1.0)  # into the second epoch's training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = read_checkpoint(last)
    assert killed_at["epoch"] < EPOCHS - 1  # it really stopped early

    resumed = ssal_fit(a, "--config", str(config), "--ckpt_path", "last")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    steps_per_epoch = int(TRAIN * 0.9) // BATCH
    run = a / "runs/ssal/version_0"
    assert not (a / "runs/ssal/version_1").exists()  # resumed in the same folder
    final = read_checkpoint(run / "checkpoints/last.ckpt")
    reference = read_checkpoint(b / "runs/ssal/version_0/checkpoints/last.ckpt")
    assert final["epoch"] == reference["epoch"] == EPOCHS - 1
    assert final["global_step"] == reference["global_step"] == EPOCHS * steps_per_epoch
    opt_state = final["optimizer_states"][0]["state"]
    assert opt_state and all(torch.isfinite(s["momentum_buffer"]).all() for s in opt_state.values())
    # each epoch validated exactly once in the log; accuracy matches the uninterrupted run
    rows = val_rows(run)
    assert sorted(int(r["epoch"]) for r in rows) == list(range(EPOCHS))
    acc = float(rows[-1]["val/acc_fine"])
    acc_ref = float(val_rows(b / "runs/ssal/version_0")[-1]["val/acc_fine"])
    with open(run / "metrics.csv") as f:
        lr_steps = [r["step"] for r in csv.DictReader(f) if r.get("lr-SGD/backbone")]
    assert len(lr_steps) == len(set(lr_steps)) == EPOCHS  # the resume step logged once
    # the resumed epoch draws the shuffle and the augmentation of the uninterrupted run's
    assert acc == pytest.approx(acc_ref, abs=1e-6), (acc, acc_ref)


SAVER = """
import sys, torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
io, path = TorchCheckpointIO(), sys.argv[1]
k = 0
while True:
    k += 1
    io.save_checkpoint({"k": k, "weights": torch.full((8_000_000,), float(k))}, path)
    print(k, flush=True)
"""


@pytest.mark.slow
def test_sigkill_while_saving_keeps_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    for delay in (0.03, 0.08, 0.13, 0.19):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
        proc.stdout.readline()  # one save done: the next one is under way
        time.sleep(delay)  # a save of 32 MB takes ~0.1-0.3 s: the kill lands mid-save
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(path, weights_only=True)  # never half-written
        assert ckpt["weights"].shape == (8_000_000,)
        assert torch.all(ckpt["weights"] == ckpt["k"])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("last.ckpt", "saver.py")]
    assert len(leftovers) <= 4  # at most one unfinished temporary file per kill
