"""Every paper run has a config whose values are the paper's, and each one trains a step."""

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssal.cli import main
from ssal.grouping import Grouping, save_groupings
from tests.conftest import write_label_file, write_tiny_config
from tests.test_data import write_cifar100

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# docs/paper.md's recipe table; weight decays are Keras l2 values (PyTorch weight_decay = 2x).
# SE-WRN-16-8 has no published recipe: it uses WRN-28-10's.
PAPER = {
    "resnet50_baseline": dict(
        epochs=80, batch=64, lr=0.088, momentum=0.93, nesterov=False, wd=1e-4
    ),
    "resnet50_ssal": dict(
        epochs=80,
        batch=64,
        lr=0.092,
        momentum=0.93,
        nesterov=False,
        wd=1e-4,
        aux_wd=1e-4,
        weights=[0.42, 0.59, 0.76],
        alpha=0.3,
    ),
    "wrn28-10_baseline": dict(epochs=80, batch=64, lr=0.016, momentum=0.9, nesterov=True, wd=7e-4),
    "wrn28-10_ssal": dict(
        epochs=80,
        batch=64,
        lr=0.021,
        momentum=0.9,
        nesterov=True,
        wd=7e-4,
        aux_wd=3e-4,
        weights=[0.8, 0.9, 1.0],
        alpha=0.4,
    ),
    "densenet190-40_baseline": dict(
        epochs=100, batch=32, lr=0.08, momentum=0.9, nesterov=True, wd=3e-4, smoothing=0.1
    ),
    "densenet190-40_ssal": dict(
        epochs=100,
        batch=32,
        lr=0.08,
        momentum=0.9,
        nesterov=True,
        wd=3e-4,
        aux_wd=1e-4,
        weights=[0.8, 0.9, 1.0],
        alpha=0.5,
        smoothing=0.1,
    ),
}

PAPER["sewrn16-8_baseline"] = PAPER["wrn28-10_baseline"]
PAPER["sewrn16-8_ssal"] = PAPER["wrn28-10_ssal"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", list(PAPER))
def test_cifar100_config_values_match_paper(name):
    cfg = load(CONFIGS / "cifar100" / f"{name}.yaml")
    p, m, d = PAPER[name], load(CONFIGS / "cifar100" / f"{name}.yaml")["model"], cfg["data"]
    assert cfg["trainer"]["max_epochs"] == p["epochs"]
    assert d["init_args"]["dataset"] == "cifar100" and d["init_args"]["batch_size"] == p["batch"]
    assert d["init_args"]["max_shift"] == 5 and d["init_args"]["flip"] is True
    expected_norm = "unit" if name.startswith("resnet50") else "channel"
    assert d["init_args"]["normalization"] == expected_norm
    o, loss, g = m["optim"], m.get("loss", {}), m["groupings"]
    assert m["network"]["name"] == name.rsplit("_", 1)[0]
    assert o["lr"] == p["lr"] and o["momentum"] == p["momentum"] and o["nesterov"] == p["nesterov"]
    assert o["weight_decay"] == pytest.approx(2 * p["wd"])
    assert o["warmup_epochs"] == 10 and o["schedule_interval"] == "epoch"
    if "smoothing" in p:
        assert loss["label_smoothing"] == p["smoothing"]
        assert loss["smoothing_convention"] == "paper"
    if name.endswith("ssal"):
        assert o["branch_weight_decay"] == pytest.approx(2 * p["aux_wd"])
        assert loss["branch_weights"] == p["weights"] and m["alpha"] == p["alpha"]
        assert g["auto_groups"] == [20, 33, 50] and g["auto_mode"] == "similar"
    else:
        assert g["source"] is None


@pytest.mark.parametrize("kind", ["baseline", "ssal"])
def test_imagenet_config_values_match_paper(kind):
    cfg = load(CONFIGS / "imagenet" / f"resnet50_{kind}.yaml")
    m, d = cfg["model"], cfg["data"]["init_args"]
    assert cfg["trainer"]["max_epochs"] == 90 and d["batch_size"] == 100
    o = m["optim"]
    assert o["lr"] == pytest.approx(0.1 * 100 / 256) and o["momentum"] == 0.9
    assert o["weight_decay"] == 1e-4 and o["warmup_epochs"] == 5
    assert m["network"]["bn_momentum"] == pytest.approx(1 - 0.9 ** (100 / 32), abs=1e-3)
    if kind == "ssal":
        assert m["groupings"]["auto_groups"] == [200, 334, 500] and m["alpha"] == 0.3
        assert m["loss"]["branch_weights"] == [1.0, 1.0, 1.0]


def _groupings(path: Path, classes: int, sizes) -> Path:
    return save_groupings(path, [Grouping(np.arange(classes) % g) for g in sizes])


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    write_cifar100(root, n_train=200, n_test=20)
    from tests.test_data import write_image_folder

    write_image_folder(root / "imagenet")
    return {
        "cifar": root,
        "imagenet": root / "imagenet",
        "g100": _groupings(root / "g100.json", 100, (20, 33, 50)),
        "g2": _groupings(root / "g2.json", 2, (2, 2, 2)),
    }


def _fast_run(config: Path, data_dir: Path, groupings: Path | None, extra=()) -> int:
    args = [
        "fit",
        "--config",
        str(config),
        "--trainer.fast_dev_run",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--data.init_args.data_dir",
        str(data_dir),
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.eval_batch_size",
        "4",
        *extra,
    ]
    if groupings is not None:
        args += ["--model.groupings.source", str(groupings)]
    return main(args)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_cifar100_config_trains_a_step(name, small_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = small_data["g100"] if name.endswith("ssal") else None
    assert _fast_run(CONFIGS / "cifar100" / f"{name}.yaml", small_data["cifar"], g) == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["baseline", "ssal"])
def test_imagenet_config_trains_a_step(kind, small_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = small_data["g2"] if kind == "ssal" else None
    extra = ["--data.init_args.num_workers", "0", "--data.init_args.heldout", "0"]
    assert (
        _fast_run(CONFIGS / "imagenet" / f"resnet50_{kind}.yaml", small_data["imagenet"], g, extra)
        == 0
    )


@pytest.mark.parametrize("path", sorted((CONFIGS / "fashion-mnist").rglob("*.yaml")))
def test_fashion_mnist_configs_parse(path):
    cfg = load(path)
    assert cfg["data"]["init_args"]["dataset"] == "fashion-mnist"
    assert cfg["model"]["network"]["name"] in ("small-cnn", "wrn-16-4", "wrn-16-8")


def test_gpu_study_configs_differ_only_in_groupings_and_have_proportionate_branches():
    """The three GPU study configs share every setting but the groupings; the batch and the
    learning rate are scaled together; the halved branch layouts hold the share of the model
    the paper's layouts hold on WRN-28-10 (15% of the parameters, 24% of the forward FLOPs)."""
    import torch

    from ssal.backbones import create_model, default_groupings
    from ssal.bench import count_flops
    from ssal.loss import SSALLoss

    folder = CONFIGS / "fashion-mnist" / "study-gpu"
    base, similar, split = (load(folder / f"wrn-16-8_{k}.yaml") for k in KINDS)
    mode = lambda cfg: cfg["model"]["groupings"]["auto_mode"]  # noqa: E731
    assert mode(similar) == "similar" and mode(split) == "split"
    for cfg in (base, split):
        assert cfg["trainer"] == similar["trainer"] and cfg["data"] == similar["data"]
    # all but the groupings, alpha and the branch layouts
    strip = lambda m: {k: v for k, v in m.items() if k not in ("groupings", "alpha", "network")}  # noqa: E731
    assert strip(base["model"]) == strip(similar["model"]) == strip(split["model"])
    names = {cfg["model"]["network"]["name"] for cfg in (base, similar, split)}
    layouts = similar["model"]["network"]["layouts"]
    assert names == {"wrn-16-8"} and layouts == split["model"]["network"]["layouts"]
    batch = similar["data"]["init_args"]["batch_size"]
    assert similar["model"]["optim"]["lr"] == pytest.approx(0.05 * batch / 128)

    def shares(name, classes, groups, shape, layouts=None):
        g = default_groupings(classes, groups)
        x, y = torch.randn(2, *shape), torch.arange(2) % classes
        bare = count_flops(create_model(name, classes, in_channels=shape[0]), SSALLoss(), x, y)
        model = create_model(name, classes, g, in_channels=shape[0], layouts=layouts)
        full = count_flops(model, SSALLoss(g, [1.0] * 3), x, y)
        params = model.num_parameters()
        return params["branches"] / params["total"], 1 - bare["forward"] / full["forward"]

    paper = shares("wrn28-10", 100, (20, 33, 50), (3, 32, 32))
    ours = shares("wrn-16-8", 10, (2, 3, 5), (1, 28, 28), layouts)
    assert ours == pytest.approx(paper, abs=0.01)
    assert ours == pytest.approx((0.15, 0.24), abs=0.01)


KINDS = ("baseline", "ssal-similar", "ssal-split")


@pytest.mark.parametrize(
    "path", sorted((CONFIGS / "fashion-mnist").rglob("small-cnn_*.yaml")), ids=lambda p: p.name
)
def test_small_cnn_configs_hold_the_demos_recipe(path):
    """The demo trains with small-cnn's registry recipe and the demo's data settings; its
    configs spell out the same."""
    from ssal.args import RENAMED_KEYS
    from ssal.backbones import get_entry
    from ssal.demo import DEMO_DATA

    config = load(path)
    model, data = config["model"], config["data"]["init_args"]
    for key, value in get_entry("small-cnn").recipe.items():
        _, group, field = RENAMED_KEYS[f"model.{key}"].split(".")
        assert model[group][field] == value, (path.name, key)
    for key, value in DEMO_DATA.items():
        assert data[key] == value, (path.name, key)


@pytest.mark.slow
def test_config_trains_with_the_authors_label_files(tmp_path, monkeypatch):
    """``groupings:`` in a config takes the authors' text files, one grouping per branch."""
    import torch

    monkeypatch.chdir(tmp_path)
    write_cifar100(tmp_path / "data", n_train=64, n_test=8)
    files = [
        str(write_label_file(tmp_path / f"cifar100_{g}_group_similar_v2.txt", np.arange(100) % g))
        for g in (2, 3, 5)
    ]
    config = write_tiny_config(
        tmp_path / "c.yaml",
        tmp_path / "data",
        trainer={"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1},
        data={"batch_size": 16, "eval_batch_size": 8, "heldout": 0},
        model={"groupings": {"source": files}},
    )
    assert main(["fit", "--config", str(config)]) == 0
    [ckpt] = (tmp_path / "runs").rglob("last.ckpt")
    info = torch.load(ckpt, weights_only=True)["ssal"]
    assert [g["name"] for g in info["groupings"]] == [Path(f).stem for f in files]
    assert info["groupings"][2]["assignment"] == (np.arange(100) % 5).tolist()


def test_no_file_refers_to_documents_outside_the_repository():
    import subprocess

    root = CONFIGS.parent
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    wrong = []
    for name in tracked:
        path = root / name
        if path.suffix not in (".py", ".md", ".yaml", ".sh", ".toml", ".txt", ".cfg", ""):
            continue
        text = path.read_text(errors="ignore") if path.is_file() else ""
        # spelled in pieces so that this file does not name them itself
        needles = ("PAPER" + ".md", ".." + "/shared", "/wo" + "rk/")
        wrong += [f"{name}: {s}" for s in needles if s in text]
        # the issue tracker is outside the repository too: say the fact, not its issue number
        wrong += [f"{name}: {m}" for m in re.findall(r"\b[Ii]ssues? #?\d+", text)]
    assert not wrong
