"""Bad input gets one clear line and loses nothing; shared weights load without pickle."""

import csv
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ssal.checkpoint import load_checkpoint, read_checkpoint
from ssal.cli import main
from tests.conftest import write_tiny_config
from tests.test_data import write_cifar100


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("run")
    write_cifar100(tmp / "data", n_train=300, n_test=60)
    logger = {"class_path": "ssal.loggers.ResumableCSVLogger"}
    logger["init_args"] = {"save_dir": str(tmp / "runs"), "name": "ssal"}
    config = write_tiny_config(
        tmp / "c.yaml",
        tmp / "data",
        trainer={"logger": logger},
        model={"groupings": {"source": "cifar100-superclasses"}},
    )
    assert main(["fit", "--config", str(config)]) == 0
    run = tmp / "runs/ssal/version_0"
    return {"tmp": tmp, "config": config, "run": run, "ckpt": run / "checkpoints/last.ckpt"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line_error(capsys, code: int, *needles: str) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("ssal: error:"), err
    assert "Traceback" not in "\n".join(err)
    for n in needles:
        assert n in err[-1], err[-1]
    return err[-1]


def test_export_round_trip_without_pickle(trained, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(trained["ckpt"]), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "ssal.json"]
    for p in out.iterdir():  # meant for sharing: readable by all, like the JSON beside it
        assert p.stat().st_mode & 0o444 == 0o444
    info = json.loads((out / "ssal.json").read_text())
    assert info["model"] == "tiny-wrn" and info["groupings"][0]["num_groups"] == 20
    a, _ = load_checkpoint(trained["ckpt"])
    b, card_b = load_checkpoint(out)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x).logits, b(x).logits)
    assert card_b.alpha == info["alpha"] and card_b.checkpoint == str(trained["ckpt"])
    j1, j2 = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["evaluate", "--checkpoint", str(trained["ckpt"]), "--json", str(j1)]) == 0
    assert main(["evaluate", "--checkpoint", str(out), "--json", str(j2)]) == 0
    r1, r2 = json.loads(j1.read_text()), json.loads(j2.read_text())
    assert r1["fine_accuracy"] == r2["fine_accuracy"] and r1["num_samples"] == 60


def test_corrupt_and_foreign_files(trained, tmp_path, capsys):
    before = snapshot(trained["run"])
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["ckpt"].read_bytes()[:5000])
    one_line_error(
        capsys, main(["evaluate", "--checkpoint", str(truncated)]), "not a loadable checkpoint"
    )
    export = tmp_path / "bad_export"
    assert main(["export", "--checkpoint", str(trained["ckpt"]), "--out", str(export)]) == 0
    (export / "model.safetensors").write_bytes(b"garbage")
    one_line_error(capsys, main(["evaluate", "--checkpoint", str(export)]), "safetensors")
    (export / "ssal.json").write_text("{}")
    one_line_error(capsys, main(["evaluate", "--checkpoint", str(export)]), "ssal.json", "schema")
    one_line_error(capsys, main(["evaluate", "--checkpoint", str(tmp_path)]), "missing ssal.json")
    assert snapshot(trained["run"]) == before  # nothing of the run touched


def test_unknown_model_and_mismatched_groupings(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "--config", str(trained["config"]), "--model.network.name", "resnet-9000"])
    one_line_error(capsys, code, "unknown model 'resnet-9000'")
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"num_classes": 10, "groupings": [{"assignment": [0, 1] * 5}]}))
    code = main(["fit", "--config", str(trained["config"]), "--model.groupings.source", str(g)])
    one_line_error(capsys, code, "written for 10 classes but the model has 100")


def test_missing_dataset_files(trained, tmp_path, capsys):
    data = tmp_path / "data"
    write_cifar100(data, n_train=20, n_test=10)
    (data / "cifar-100-python" / "test").unlink()
    config = trained["config"]
    code = main(["fit", "--config", str(config), "--data.init_args.data_dir", str(data)])
    one_line_error(capsys, code, "test")
    code = main(["fit", "--config", str(config), "--data.init_args.data_dir", str(tmp_path / "x")])
    one_line_error(capsys, code, "cifar-100-python")
    write_cifar100(tmp_path / "cut", n_train=20, n_test=10)
    train = tmp_path / "cut" / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:1000])  # a truncated download
    before = snapshot(tmp_path / "cut")
    code = main(
        ["fit", "--config", str(config), "--data.init_args.data_dir", str(tmp_path / "cut")]
    )
    one_line_error(capsys, code, "train")
    assert snapshot(tmp_path / "cut") == before


class System:
    """Unpickles as ``os.system(command)``: a tampered dataset file's way to run code."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


@pytest.mark.parametrize("target", ["meta", "train"])
def test_cifar_files_never_run_code(tmp_path, capsys, monkeypatch, target):
    """The paper's config on CIFAR-100 files whose pickle calls ``os.system``: a ``meta``
    holding only the payload, or a ``train`` file of valid arrays with one payload among
    them. The command never runs; one line names the file and the refused global."""
    marker = tmp_path / "PAYLOAD-RAN"
    folder = write_cifar100(tmp_path / "data", n_train=20, n_test=10)
    payload = System(f"touch {marker}")
    if target == "meta":
        doc = payload
    else:
        doc = pickle.loads((folder / "train").read_bytes(), encoding="bytes")
        doc[b"extra"] = [payload]
    (folder / target).write_bytes(pickle.dumps(doc, protocol=2))
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).parents[1] / "configs/cifar100/resnet50_baseline.yaml"
    args = ["--data.data_dir", str(tmp_path / "data"), "--trainer.accelerator", "cpu"]
    code = main(["fit", "--config", str(config), *args])
    one_line_error(capsys, code, str(folder / target), "system", "nothing ran")
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()


class DivergeAtEpoch(Callback):
    """Stands in for a diverging run: from ``epoch`` on, the first weight is NaN."""

    def __init__(self, epoch: int = 2) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if trainer.current_epoch >= self.epoch:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(trained, capsys):
    ckpt = trained["ckpt"]
    good = read_checkpoint(ckpt)
    before = ckpt.read_bytes()
    diverge = json.dumps([{"class_path": "tests.test_safety.DivergeAtEpoch"}])
    code = main(
        [
            "fit",
            "--config",
            str(trained["config"]),
            "--ckpt_path",  # the run by its folder: an added callback makes another config
            str(trained["run"]),
            "--trainer.max_epochs",
            "4",
            "--trainer.callbacks",
            diverge,
        ]
    )
    line = one_line_error(capsys, code, "NaN or infinite at step", "last good checkpoint")
    assert "epoch 2" in line
    assert ckpt.read_bytes() == before and read_checkpoint(ckpt)["epoch"] == good["epoch"]
    with open(trained["run"] / "metrics.csv") as f:
        epochs = {r["epoch"] for r in csv.DictReader(f) if r.get("val/acc_fine")}
    assert epochs == {"0", "1"}  # the earlier epochs' logs are still there
