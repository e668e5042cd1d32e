"""Runs survive being killed: resume after SIGKILL mid-epoch, and during a checkpoint save."""

import csv
import os
import shlex
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


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_interrupt_before_the_first_checkpoint_never_points_at_another_run(tmp_path):
    """Run A (one config) has a checkpoint; run B (another config) is stopped by Ctrl-C before
    its first one. What B prints must leave A alone, and so must ``--ckpt_path last``."""
    from tests.test_data import write_cifar100

    write_cifar100(tmp_path / "data", n_train=300, n_test=100)
    a = write_tiny_config(tmp_path / "a.yaml", tmp_path / "data", trainer={"max_epochs": 1})
    b = write_tiny_config(  # 120 steps an epoch: time to stop it before its checkpoint
        tmp_path / "b.yaml", tmp_path / "data", data={"batch_size": 2}, model={"optim": {"lr": 0.1}}
    )
    first = ssal_fit(tmp_path, "--config", str(a))
    assert first.wait(timeout=300) == 0, first.stderr.read()
    run_a = tmp_path / "runs/ssal/version_0"
    before = snapshot(run_a)
    assert "checkpoints/last.ckpt" in before

    proc = ssal_fit(tmp_path, "--config", str(b))
    started = tmp_path / "runs/ssal/version_1/config.yaml"  # written as B's training starts
    deadline = time.time() + 120
    while not started.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert started.is_file(), proc.stderr.read() if proc.poll() is not None else "no run B"
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert not (tmp_path / "runs/ssal/version_1/checkpoints/last.ckpt").exists()
    line = err.strip().splitlines()[-1]
    command = shlex.split(line.split(" with: ", 1)[1])

    # the printed command, cut short (2 batches an epoch), must not touch A
    again = ssal_fit(tmp_path, *command[2:], "--trainer.limit_train_batches", "2")
    assert again.wait(timeout=300) == 0, again.stderr.read()
    assert snapshot(run_a) == before
    # it starts B afresh, in a folder of its own
    assert line.startswith("ssal: interrupted before the first checkpoint, nothing to resume")
    assert command == ["ssal", "fit", "--config", str(b)]
    assert (tmp_path / "runs/ssal/version_2/checkpoints/last.ckpt").is_file()

    refused = ssal_fit(tmp_path, "--config", str(b), "--ckpt_path", "last")
    err = refused.communicate(timeout=120)[1]
    assert refused.returncode == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("ssal:")]
    assert len(lines) == 1 and "no run in runs/ssal was made with this config" in lines[0], lines
    assert snapshot(run_a) == before


def test_config_differences_ignore_only_what_a_resume_may_change():
    from ssal.resume import config_differences

    saved = {
        "seed_everything": 1,
        "ckpt_path": None,
        "trainer": {
            "max_epochs": 2,
            "enable_progress_bar": False,
            "logger": {"class_path": "x", "init_args": {"version": None, "save_dir": "runs"}},
        },
        "model": {"optim": {"lr": 0.05}, "groupings": {"source": "auto"}},
    }
    resumed = {  # the same run, trained on for longer from its last checkpoint
        **saved,
        "ckpt_path": "runs/ssal/version_0/checkpoints/last.ckpt",
        "trainer": {
            "max_epochs": 5,
            "enable_progress_bar": True,
            "logger": {
                "class_path": "x",
                "init_args": {"version": 0, "resume_step": 7, "save_dir": "runs"},
            },
        },
    }
    assert config_differences(saved, resumed) == []
    other = {
        **saved,
        "model": {"optim": {"lr": 0.05}, "groupings": {"source": None, "probe_epochs": 3}},
    }
    assert config_differences(saved, other) == [
        "model.groupings.probe_epochs",
        "model.groupings.source",
    ]
    seeded = {**saved, "seed_everything": 2}
    assert config_differences(saved, seeded) == ["seed_everything"]
    assert config_differences(saved, seeded, compare_seed=False) == []
    moved = {**saved, "trainer": {**saved["trainer"], "logger": [saved["trainer"]["logger"]]}}
    assert "trainer.logger.0.init_args.save_dir" in config_differences(saved, moved)


def test_after_interrupt_names_the_run_to_resume_or_none(tmp_path):
    from ssal.resume import after_interrupt

    argv = ["fit", "--config", "my run.yaml", "--ckpt_path", "last"]
    run = tmp_path / "runs/ssal/version_3"
    assert after_interrupt(argv, run, run / "checkpoints/last.ckpt") == (
        "interrupted before the first checkpoint, nothing to resume; start afresh with: "
        "ssal fit --config 'my run.yaml'"
    )
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints/last.ckpt").write_bytes(b"")
    assert after_interrupt(argv, run, run / "checkpoints/last.ckpt") == (
        f"interrupted; resume with: ssal fit --config 'my run.yaml' --ckpt_path {run}"
    )
    elsewhere = tmp_path / "ckpts/last.ckpt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"")
    assert after_interrupt(argv, run, elsewhere).endswith(f"--ckpt_path {elsewhere}")


def test_resumable_csv_logger_keeps_the_rows_up_to_the_resume_step(tmp_path):
    from ssal.loggers import ResumableCSVLogger

    run = tmp_path / "runs/ssal/version_0"
    run.mkdir(parents=True)
    rows = [  # step 8: a validation row (kept) and the next epoch's learning rate (logged again)
        {"epoch": "0", "step": "4", "train/loss": "2.0", "val/acc_fine": "", "lr": ""},
        {"epoch": "0", "step": "8", "train/loss": "", "val/acc_fine": "0.5", "lr": ""},
        {"epoch": "", "step": "8", "train/loss": "", "val/acc_fine": "", "lr": "0.1"},
        {"epoch": "1", "step": "12", "train/loss": "1.5", "val/acc_fine": "", "lr": ""},
    ]
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    logger = ResumableCSVLogger(str(tmp_path / "runs"), name="ssal", version=0, resume_step=8)
    logger.log_metrics({"lr": 0.1}, step=8)
    logger.save()
    with open(run / "metrics.csv", newline="") as f:
        kept = [(r["step"], r["val/acc_fine"], r["lr"]) for r in csv.DictReader(f)]
    assert kept == [("4", "", ""), ("8", "0.5", ""), ("8", "", "0.1")]
