import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import ssal
from ssal.args import GroupingArgs, NetworkArgs, OptimArgs
from ssal.checkpoint import load_checkpoint, read_checkpoint
from ssal.cli import main
from ssal.grouping import Grouping, load_groupings, save_groupings
from ssal.recipe import lr_factor
from ssal.train import SSALModule
from tests.conftest import quick_trainer, write_tiny_config
from tests.test_data import write_cifar100


def test_lr_factor_is_the_papers_schedule():
    m, total = 10, 80
    for e in range(total):
        expected = (e + 1) / m if e < m else 1 - (e + 1 - m) / (total + 1 - m)
        assert lr_factor(e, m, total) == pytest.approx(expected)
    assert lr_factor(9.5, m, total) <= 1.0  # between epochs: the line joining them
    assert lr_factor(total, m, total) == pytest.approx(0.0)


def test_optimizer_groups_weight_decay(tmp_path):
    g = [Grouping(np.arange(10) % k) for k in (2, 3, 5)]
    path = save_groupings(tmp_path / "g.json", g)
    module = SSALModule(
        NetworkArgs("tiny-wrn"),
        10,
        groupings=GroupingArgs(str(path)),
        optim=OptimArgs(
            weight_decay=1.4e-3, branch_weight_decay=6e-4, nesterov=True, momentum=0.9, lr=0.02
        ),
    )
    module.trainer = type("T", (), {"max_epochs": 80, "estimated_stepping_batches": 800})()
    opt = module.configure_optimizers()["optimizer"]
    groups = {pg["name"]: pg for pg in opt.param_groups}
    assert groups["backbone"]["weight_decay"] == 1.4e-3
    assert groups["branches"]["weight_decay"] == 6e-4
    assert groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in groups["branches"]["params"])
    assert all(p.ndim <= 1 for p in groups["no_decay"]["params"])
    n = sum(p.numel() for pg in opt.param_groups for p in pg["params"])
    assert n == sum(p.numel() for p in module.net.parameters())
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 / 10)  # first warm-up epoch


def test_weight_decay_by_kind(tmp_path):
    from ssal.recipe import DECAY_KINDS, parameter_groups

    net = ssal.create_model("tiny-wrn", 10, [np.arange(10) % 2])
    groups = parameter_groups(net, 1e-3, 5e-4, by_kind={"backbone.linear.bias": 2e-3})
    wd = {g["name"]: g["weight_decay"] for g in groups}
    assert set(wd) <= set(DECAY_KINDS) and wd["backbone.linear.bias"] == 2e-3
    assert wd["backbone.conv.weight"] == 1e-3 and wd["branches.conv.weight"] == 5e-4
    assert wd["branches.linear.weight"] == 5e-4 and wd["backbone.norm.weight"] == 0.0
    [fc_bias] = [g for g in groups if g["name"] == "backbone.linear.bias"]
    assert fc_bias["params"][0] is net.backbone.fc.bias
    with pytest.raises(ValueError, match=r"unknown weight decay kinds \['backbone.fc.weight'\]"):
        SSALModule(num_classes=10, optim={"weight_decay_by_kind": {"backbone.fc.weight": 0.0}})


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    write_cifar100(tmp_path / "data", n_train=300, n_test=100)
    return tmp_path / "data"


def fit_tiny(tmp_path: Path, cifar_dir: Path, *extra: str) -> Path:
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger"}
    logger["init_args"] = {"save_dir": str(tmp_path / "runs"), "name": "tiny"}
    config = write_tiny_config(
        tmp_path / "tiny.yaml",
        cifar_dir,
        trainer={"default_root_dir": str(tmp_path), "logger": logger},
        data={"eval_batch_size": 64},
    )
    assert main(["fit", "--config", str(config), *extra]) == 0
    return tmp_path / "runs" / "tiny" / "version_0"


@pytest.mark.slow
def test_fit_auto_groupings_then_evaluate_matches_last_validation(tmp_path, cifar_dir, capsys):
    run = fit_tiny(
        tmp_path,
        cifar_dir,
        "--model.groupings.source",
        "auto",
        "--model.groupings.probe_epochs",
        "1",
        "--model.groupings.auto_groups",
        "[20, 33, 50]",
    )
    groupings, names = load_groupings(run / "groupings.json", 100)
    assert [g.num_groups for g in groupings] == [20, 33, 50] and len(names) == 100
    ckpt = run / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, weights_only=True)  # no pickled objects in our checkpoints
    info = raw["ssal"]
    # last.ckpt is the final epoch's state even where the monitored accuracy did not improve
    assert raw["epoch"] == 1 and raw["global_step"] == 14
    assert info["model"] == "tiny-wrn" and len(info["groupings"]) == 3
    assert info["preprocessing"]["mean"] and info["data"]["init_args"]["dataset"] == "cifar100"
    assert (run / "tensorboard").is_dir() and (run / "metrics.csv").is_file()

    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    last_val = [r for r in rows if r.get("val/acc_fine")][-1]
    assert {"val/acc_joint", "val/acc_branch1", "val/loss_branch3", "val/kept_fraction"} <= set(
        k for k, v in last_val.items() if v
    )
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["fine_accuracy"] == pytest.approx(float(last_val["val/acc_fine"]), abs=1e-6)
    assert result["joint_accuracy"] == pytest.approx(float(last_val["val/acc_joint"]), abs=1e-6)
    assert result["num_samples"] == 100 and len(result["branch_accuracy"]) == 3
    c = result["set_aside"]
    assert 0 <= c["kept_fraction"] <= 1 and len(c["set_aside_branch_accuracy"]) == 3
    assert "fine head (+TR)" in capsys.readouterr().out

    # tune alpha on the held-out split; the chosen alpha is on the grid
    assert main(["evaluate", "--checkpoint", str(ckpt), "--tune-alpha", "--json", str(out)]) == 0
    tuned = json.loads(out.read_text())
    assert tuned["alpha_tuned_on_heldout"] and 0 <= tuned["alpha"] <= 1

    # rebuilt model gives the trained network's outputs
    model, card = load_checkpoint(ckpt)
    assert [g.num_groups for g in card.groupings] == [20, 33, 50]
    x = torch.randn(2, 3, 32, 32)
    state = {k[4:]: v for k, v in raw["state_dict"].items() if k.startswith("net.")}
    again = SSALModule(NetworkArgs("tiny-wrn"), 100, groupings={"source": groupings}).net.eval()
    again.load_state_dict(state)
    torch.testing.assert_close(model(x).logits, again(x).logits)

    # groupings from the checkpoint's held-out confusion
    gout = tmp_path / "g.json"
    assert main(["group", "--checkpoint", str(ckpt), "--groups", "10", "--out", str(gout)]) == 0
    assert load_groupings(gout, 100)[0][0].num_groups == 10


def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        read_checkpoint(tmp_path / "garbage.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not an ssal checkpoint"):
        read_checkpoint(tmp_path / "foreign.ckpt")

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"ssal": {}, "state_dict": Evil()}))
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        read_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned").exists()


def test_cli_errors_for_checkpoints_are_one_line(tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "foreign.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssal: error:") and "not an ssal checkpoint" in err
    assert len(err.splitlines()) == 1


def test_fit_with_bad_groupings_file_is_one_line(tmp_path, cifar_dir, capsys):
    bad = save_groupings(tmp_path / "g.json", [np.arange(10) % 2])  # 10 classes, data has 100
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  class_path: ssal.data.InMemoryDataModule\n"
        f"  init_args: {{dataset: cifar100, data_dir: {cifar_dir}}}\n"
        f"model:\n  network: {{name: tiny-wrn}}\n  groupings: {{source: {bad}}}\n"
    )
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ssal: error:") and "written for 10 classes" in err[-1]


def test_progress_bar_reads_the_loss_only_when_it_redraws(cifar_dir):
    """No per-step metric goes to Lightning's progress-bar dict (which it turns into Python
    numbers, a device sync, after every step); the bar reads the loss from the step output at
    most every ``read_every`` steps, undoing the division by gradient accumulation."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from ssal.callbacks import LossProgressBar, LossRichProgressBar, use_loss_progress_bar
    from ssal.data import InMemoryDataModule

    # Lightning's default bar (rich, installed with ssal) and a configured tqdm bar are swapped
    default = quick_trainer(1)
    assert type(default.progress_bar_callback) is RichProgressBar
    use_loss_progress_bar(default)
    assert type(default.progress_bar_callback) is LossRichProgressBar
    assert default.progress_bar_callback.read_every == 1  # on the CPU a read costs nothing
    off = quick_trainer(1, enable_progress_bar=False)
    use_loss_progress_bar(off)
    assert off.progress_bar_callback is None

    reads = []

    class Spy(LossProgressBar):
        def get_metrics(self, trainer, pl_module):  # noqa: ANN001, ANN201
            pending = self._pending
            metrics = super().get_metrics(trainer, pl_module)
            if trainer.training and pending and not self._pending:
                reads.append((trainer.global_step, metrics["loss"]))
            return metrics

    logged = []

    class Loss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            logged.append(float(trainer.callback_metrics["train/loss"]))

    dm = InMemoryDataModule("cifar100", str(cifar_dir), batch_size=32, heldout=0)
    module = SSALModule(NetworkArgs("tiny-wrn"), 100, optim=OptimArgs(warmup_epochs=1))
    trainer = quick_trainer(
        4,
        limit_val_batches=0,
        accumulate_grad_batches=2,
        callbacks=[TQDMProgressBar(refresh_rate=1), Loss()],
    )
    use_loss_progress_bar(trainer, read_every=3)
    bar = trainer.progress_bar_callback
    assert type(bar) is LossProgressBar and bar.refresh_rate == 1 and bar.read_every == 3
    trainer.callbacks[trainer.callbacks.index(bar)] = Spy(read_every=3)
    trainer.fit(module, dm)  # 4 optimizer steps of 2 batches each
    assert not any(k.startswith("train/") for k in trainer.progress_bar_metrics)
    # read at batches 1, 4 and 7 of 8, never after every batch
    assert len(reads) == 3
    # the loss shown is the batch's loss as logged, not the accumulation-scaled one
    assert float(reads[-1][1]) == pytest.approx(logged[6], rel=1e-3)


def test_lightning_weight_averaging_with_an_ssal_run(tmp_path):
    """Lightning's EMA callback copies the module (branch hooks included), averages it each
    step and swaps the average in at the end; the averaged SSAL model evaluates."""
    from lightning.pytorch.callbacks import WeightAveraging
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    from ssal.data import InMemoryDataModule
    from ssal.evaluate import evaluate_model

    write_cifar100(tmp_path / "data", n_train=200, n_test=60)
    dm = InMemoryDataModule("cifar100", str(tmp_path / "data"), batch_size=20, heldout=0.1)
    g = [Grouping(np.arange(100) % k) for k in (2, 3, 5)]
    module = SSALModule(NetworkArgs("tiny-wrn"), 100, groupings=GroupingArgs(g))
    seen: list[dict[str, torch.Tensor]] = []

    class Snapshot(L.Callback):  # the raw weights after the last step, before the swap
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # noqa: ANN001
            seen[:] = [{k: v.clone() for k, v in pl_module.net.state_dict().items()}]

    ema = WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(0.8))
    trainer = quick_trainer(18, callbacks=[Snapshot(), ema], limit_val_batches=0)
    trainer.fit(module, dm)
    averaged = module.net.state_dict()
    raw = seen[0]
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], averaged[k])]
    assert moved, "the averaged weights replaced the last step's"
    assert all(averaged[k].shape == raw[k].shape for k in raw)
    figures = evaluate_model(
        module.net, dm.test_dataloader(), lambda x: dm.prepare_batch(x, False), 100, 0.3
    )
    assert figures["num_samples"] == 60 and len(figures["branch_accuracy"]) == 3
    # the averaged model's branch hooks feed its own branches: outputs are those of its weights
    x = dm.prepare_batch(dm.test_arrays.images[:4], False)
    copy_net = ssal.create_model("tiny-wrn", 100, g)
    copy_net.load_state_dict(averaged)
    module.net.eval()
    copy_net.eval()
    with torch.no_grad():
        a, b = module.net(x), copy_net(x)
    assert all(
        torch.allclose(p, q, atol=1e-6)
        for p, q in zip(a.branch_logits, b.branch_logits, strict=True)
    )


@pytest.mark.slow
def test_auto_groupings_from_python(tmp_path, monkeypatch):
    """``groupings: auto`` from Python: ``derive_groupings`` trains the module's network as the
    probe, writes the groupings where asked and gives the module its branches, building the
    network twice in all; a plain ``fit`` before that is refused in one line."""
    import ssal.train
    from ssal.data import InMemoryDataModule
    from ssal.trainer import derive_groupings

    write_cifar100(tmp_path / "data", n_train=200, n_test=40)
    dm = InMemoryDataModule("cifar100", str(tmp_path / "data"), batch_size=20, heldout=0.2)
    built = []
    create = ssal.train.create_model
    monkeypatch.setattr(
        ssal.train,
        "create_model",  # real builds only (the meta-device check before training is free)
        lambda *a, **k: (
            (torch.get_default_device().type != "meta" and built.append(a)) or create(*a, **k)
        ),
    )
    auto = GroupingArgs("auto", auto_groups=[2, 3], probe_epochs=1)
    module = SSALModule(NetworkArgs("tiny-wrn"), 100, groupings=auto)
    with pytest.raises(ValueError, match="derive_groupings"):
        quick_trainer(1, limit_val_batches=0).fit(module, dm)
    out = tmp_path / "mine" / "groupings.json"
    assert derive_groupings(module, dm, out, accelerator="cpu", progress=False) == out
    groupings, _ = load_groupings(out, 100)
    assert [g.num_groups for g in groupings] == [2, 3]
    assert [g.num_groups for g in module.groupings] == [2, 3]
    assert len(module.net.branches) == 2 and len(built) == 2
    quick_trainer(3, limit_val_batches=0).fit(module, dm)  # the SSAL model trains
    assert module.trainer.global_step == 3


def test_log_interval_gives_short_runs_loss_curves():
    from ssal.callbacks import log_interval

    assert log_interval(50, 422) == 50  # long epochs: as asked
    assert log_interval(50, 30) == 7  # fewer than two rows an epoch: a quarter epoch
    assert log_interval(50, 3) == 1 and log_interval(1, 1) == 1


def test_fit_limited_to_a_few_batches_still_logs_the_loss(tmp_path, cifar_dir):
    """``limit_train_batches`` decides how many steps an epoch has, so a copied
    ``log_every_n_steps: 50`` still leaves rows of training loss for the report."""
    from ssal.runs import read_metrics_csv

    run = fit_tiny(tmp_path, cifar_dir, "--data.init_args.batch_size", "8",
                   "--trainer.limit_train_batches", "3", "--trainer.log_every_n_steps", "50",
                   "--trainer.limit_val_batches", "1")  # fmt: skip
    losses = read_metrics_csv(run / "metrics.csv")["train/loss"]
    assert len(losses["step"]) >= 4  # 2 epochs x 3 steps, one row a step


@pytest.mark.parametrize(
    "network, said",
    [
        ({"positions": ["group1.0", "nowhere", "group2"]}, "no module named 'nowhere'"),
    ],
)
def test_a_model_that_cannot_be_built_fails_before_the_probe_trains(tmp_path, network, said):
    """groupings: auto with branches that cannot be built: one line, in seconds, before the
    probe trains (no probe line, no groupings.json, no run folder)."""
    import time

    from tests.conftest import write_tiny_config
    from tests.test_data import write_cifar100

    write_cifar100(tmp_path / "data", n_train=60, n_test=10)
    config = write_tiny_config(
        tmp_path / "c.yaml",
        tmp_path / "data",
        trainer={"default_root_dir": str(tmp_path / "out")},
        model={"network": network, "groupings": {"source": "auto", "probe_epochs": 1}},
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ssal.cli", "fit", "--config", str(config)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    # under 10 s on an idle 2-core machine, start-up included; loose here for loaded CI runners
    assert time.perf_counter() - start < 60
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("ssal: error: ")
    assert said in lines[0] and "probe" not in done.stderr
    assert not list(tmp_path.rglob("groupings.json"))
