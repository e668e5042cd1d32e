"""The authors'-recipe configs (configs/*/authors/) reproduce the authors' runs item by item:
schedule, weight decay per kind of parameter, initialisers, dropout, zero-init residuals,
augmentation, data split and precision (docs/paper.md has the facts)."""

import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from ssal.cli import main
from ssal.data.image_folder import ImageFolderDataModule
from ssal.data.in_memory import InMemoryDataModule
from ssal.train import SSALModule
from tests.conftest import write_label_file
from tests.test_data import write_cifar100, write_image_folder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CIFAR = [
    f"{m}_{k}" for m in ("resnet50", "wrn28-10", "densenet190-40") for k in ("baseline", "ssal")
]
IMAGENET = ["resnet50_baseline", "resnet50_ssal"]
RUNS = [f"cifar100/{r}" for r in CIFAR] + [f"imagenet/{r}" for r in IMAGENET]


def config(run: str) -> dict:
    dataset, name = run.split("/")
    return yaml.safe_load((CONFIGS / dataset / "authors" / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("labels")


def label_files(folder: Path, names: list[str], classes: int, groups=None) -> list[str]:
    """The authors' groupings files the config names, written in their format (class c in
    group c mod G, or ``groups`` groups)."""
    out = []
    for name in names:
        g = groups or int(Path(name).stem.split("_")[1])
        out.append(str(write_label_file(folder / Path(name).name, np.arange(classes) % g)))
    return out


def build_module(run: str, label_dir: Path) -> SSALModule:
    """The config's SSALModule, with the authors' groupings files written in ``label_dir``."""
    model = dict(config(run)["model"])
    classes = 1000 if run.startswith("imagenet") else 100
    if model["groupings"]["source"]:
        files = label_files(label_dir, model["groupings"]["source"], classes)
        model["groupings"] = {**model["groupings"], "source": files}
    return SSALModule(num_classes=classes, **model)


@cache
def _on_meta(run: str, label_dir: Path) -> SSALModule:
    with torch.device("meta"):
        return build_module(run, label_dir)


@pytest.fixture
def module(label_dir):
    """The config's module with its network on the meta device (structure, no values)."""
    return lambda run: _on_meta(run, label_dir)


@pytest.fixture
def built(label_dir):
    """The config's module with its network initialised on the CPU."""
    return lambda run: build_module(run, label_dir)


def optimizer_and_schedule(module: SSALModule, epochs: int, steps: int):
    module.trainer = type("T", (), {"max_epochs": epochs, "estimated_stepping_batches": steps})()
    cfg = module.configure_optimizers()
    return cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]


@pytest.mark.parametrize("run", RUNS)
def test_config_is_the_authors_run(run):
    cfg = config(run)
    data, model = cfg["data"]["init_args"], cfg["model"]
    assert cfg["trainer"]["precision"] == "32-true"
    assert data["heldout"] == 0
    if run.endswith("ssal"):
        sizes = (200, 334, 500) if run.startswith("imagenet") else (20, 33, 50)
        prefix = "imagenet" if run.startswith("imagenet") else "cifar100"
        expected = [f"labels/{prefix}_{g}_group_similar_v2.txt" for g in sizes]
        assert model["groupings"]["source"] == expected
        assert model["alpha"] == {"resnet50": 0.3, "wrn28-10": 0.4}.get(
            run.split("/")[1].split("_")[0], 0.5
        )
    else:
        assert model["groupings"]["source"] is None


# The authors' settings, written out here from keras/run_experiments.py and the ImageNet
# trainer (not read from the configs under test): epochs, batch, peak learning rate,
# momentum, Nesterov, branch weights, label smoothing.
AUTHORS = {
    "cifar100/resnet50_baseline": (80, 64, 0.088, 0.93, False, None, 0.0),
    "cifar100/resnet50_ssal": (80, 64, 0.092, 0.93, False, [0.42, 0.59, 0.76], 0.0),
    "cifar100/wrn28-10_baseline": (80, 64, 0.016, 0.9, True, None, 0.0),
    "cifar100/wrn28-10_ssal": (80, 64, 0.021, 0.9, True, [0.8, 0.9, 1.0], 0.0),
    "cifar100/densenet190-40_baseline": (100, 32, 0.08, 0.9, True, None, 0.1),
    "cifar100/densenet190-40_ssal": (100, 32, 0.08, 0.9, True, [0.8, 0.9, 1.0], 0.1),
    "imagenet/resnet50_baseline": (90, 100, 0.1 * 100 / 256, 0.9, False, None, 0.0),
    "imagenet/resnet50_ssal": (90, 100, 0.1 * 100 / 256, 0.9, False, [1.0, 1.0, 1.0], 0.0),
}


@pytest.mark.parametrize("run", RUNS)
def test_config_has_the_authors_settings(run):
    cfg = config(run)
    optim, loss = cfg["model"]["optim"], cfg["model"].get("loss", {})
    epochs, batch, lr, momentum, nesterov, weights, smoothing = AUTHORS[run]
    assert cfg["trainer"]["max_epochs"] == epochs
    assert cfg["data"]["init_args"]["batch_size"] == batch
    assert optim["lr"] == pytest.approx(lr, rel=1e-12)
    assert (optim["momentum"], optim["nesterov"]) == (momentum, nesterov)
    assert loss.get("branch_weights") == weights
    assert loss.get("label_smoothing", 0.0) == smoothing


@pytest.mark.parametrize("run", [f"cifar100/{r}" for r in CIFAR])
def test_cifar_learning_rate_of_every_epoch_is_the_keras_formula(run, module):
    """keras/helper.py lr_scheduler, epochs counted from 0, m = 10."""
    epochs = config(run)["trainer"]["max_epochs"]
    m = module(run)
    opt, sched = optimizer_and_schedule(m, epochs, epochs * 3)
    peak, warm = AUTHORS[run][2], 10
    for e in range(epochs):
        if e < warm:
            expected = peak * (e + 1) / warm
        else:
            expected = peak * (1 - (e + 1 - warm) / (epochs + 1 - warm))
        assert all(g["lr"] == pytest.approx(expected, rel=1e-12) for g in opt.param_groups)
        opt.step()  # no gradients: the order Lightning keeps, without a warning
        sched.step()


@pytest.mark.parametrize("run", [f"imagenet/{r}" for r in IMAGENET])
def test_imagenet_learning_rate_of_every_step_counts_epochs_from_1(run, module):
    """pytorch/trainer.py steps PiecewiseLinear([0, 4, 90], [1/5, 1, 0]) at epoch + i / n with
    epochs 1..90: warm-up from 0.4x over 3 epochs, the 90th epoch at 0."""
    n, peak = 7, 0.1 * 100 / 256
    opt, sched = optimizer_and_schedule(module(run), 90, 90 * n)
    lrs = []
    for k in range(90 * n):
        t = k // n + 1 + (k % n) / n
        expected = peak * float(np.interp(t, [0, 4, 90], [1 / 5, 1, 0]))
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: the order Lightning keeps, without a warning
        sched.step()
    assert lrs[0] == pytest.approx(0.4 * peak) and lrs[3 * n] == pytest.approx(peak)
    assert lrs[89 * n :] == [0.0] * n


# PyTorch weight_decay of each kind of parameter in the authors' runs (Keras l2(wd) = 2 x wd);
# kinds not listed get none
DECAY = {
    "resnet50": {"backbone.conv.weight": 2e-4, "branches.conv.weight": 2e-4},
    "wrn28-10": {
        "backbone.conv.weight": 1.4e-3,
        "backbone.conv.bias": 1.4e-3,
        "backbone.linear.weight": 1.4e-3,
        "backbone.linear.bias": 1.4e-3,
        "branches.conv.weight": 6e-4,
        "branches.linear.weight": 1.4e-3,
        "branches.linear.bias": 1.4e-3,
    },
    "densenet190-40": {
        "backbone.conv.weight": 6e-4,
        "backbone.linear.weight": 6e-4,
        "branches.conv.weight": 6e-4,
    },
}


def kind_of(name: str, module: nn.Module, pname: str) -> str:
    part = "branches" if name.startswith("branches") else "backbone"
    layer = {nn.Conv2d: "conv", nn.Linear: "linear", nn.BatchNorm2d: "norm"}
    kind = next(v for k, v in layer.items() if isinstance(module, k))
    return f"{part}.{kind}.{pname}"


@pytest.mark.parametrize("run", RUNS)
def test_weight_decay_of_every_parameter(run, module):
    m = module(run)
    opt, _ = optimizer_and_schedule(m, 80, 80)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    model = run.split("/")[1].split("_")[0]
    found = {}
    for name, mod in m.net.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            kind = kind_of(name, mod, pname)
            expected = 1e-4 if run.startswith("imagenet") else DECAY[model].get(kind, 0.0)
            assert decay_of[id(p)] == pytest.approx(expected, abs=0), (name, pname)
            found[kind] = expected
    assert len(decay_of) == sum(1 for _ in m.net.parameters())
    if run == "cifar100/resnet50_ssal":  # their convolutions have biases, never decayed
        assert found["backbone.conv.bias"] == found["branches.conv.bias"] == 0.0
    if run.startswith("cifar100/densenet"):
        assert "backbone.conv.bias" not in found  # Keras' DenseNet convolutions have none


def check_init(w: torch.Tensor, scheme: str) -> None:
    w = w.detach().double()
    fan_in, fan_out = w[0].numel(), w.shape[0] * w[0][0].numel()
    if scheme == "he_normal":  # truncated at 2 sigma, sigma chosen so that std = sqrt(2/fan_in)
        std = math.sqrt(2 / fan_in)
        assert w.std().item() == pytest.approx(std, rel=0.05)
        assert w.abs().max().item() <= 2 * std / 0.87962566103423978 * (1 + 1e-6)
    elif scheme == "glorot_uniform":
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert w.abs().max().item() <= limit
        assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.05)
    elif scheme == "orthogonal":
        flat = w.reshape(w.shape[0], -1)
        gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
        assert torch.allclose(gram, torch.eye(len(gram), dtype=gram.dtype), atol=1e-5)
    elif scheme == "kaiming_fan_out":  # torchvision's ResNet
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    elif scheme == "torch":  # PyTorch's default: uniform within 1 / sqrt(fan_in)
        assert w.abs().max().item() <= 1 / math.sqrt(fan_in)
        assert w.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)


INIT = {
    "resnet50": {
        "layer3.0.conv2": "he_normal",
        "stem.0": "he_normal",
        "fc": "he_normal",
        "branches.0.0.0": "he_normal",
        "branches.2.4": "glorot_uniform",
    },
    "wrn28-10": {
        "group2.1.conv1": "glorot_uniform",
        "group1.0.shortcut": "glorot_uniform",
        "fc": "glorot_uniform",
        "branches.0.0.0": "he_normal",
        "branches.1.5.0": "glorot_uniform",
    },
    "densenet190-40": {
        "block1.layers.0.conv2": "orthogonal",
        "block2.layers.5.conv1": "orthogonal",
        "trans1.2": "orthogonal",
        "fc": "glorot_uniform",
        "branches.0.0.0": "he_normal",
        "branches.2.5": "glorot_uniform",
    },
    "resnet50-imagenet": {
        "layer3.0.conv2": "kaiming_fan_out",
        "branches.0.0.0": "torch",
        "branches.2.1.paths.0.0.0": "torch",
    },
}


SSAL_RUNS = [
    pytest.param(r, marks=pytest.mark.slow) if "densenet" in r else r  # 189 orthogonal layers
    for r in RUNS
    if r.endswith("ssal")
]


@pytest.mark.parametrize("run", SSAL_RUNS)
def test_initialisers_per_layer_type(run, built):
    net = built(run).net
    model = "resnet50-imagenet" if run.startswith("imagenet") else run.split("/")[1][:-5]
    for name, scheme in INIT[model].items():
        layer = net.get_submodule(name if name.startswith("branches") else f"backbone.{name}")
        check_init(layer.weight, scheme)
        if layer.bias is not None and scheme != "torch":
            assert torch.all(layer.bias == 0), name
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(n.bias == 0) for n in norms)


def test_se_layers_are_orthogonal():
    import ssal

    net = ssal.create_model("sewrn16-8", 100).backbone
    check_init(net.group2[0].se.fc1.weight, "orthogonal")
    check_init(net.group2[0].se.fc2.weight, "orthogonal")
    check_init(net.group2[0].conv1.weight, "glorot_uniform")


@pytest.mark.parametrize("run", [f"imagenet/{r}" for r in IMAGENET])
def test_zero_init_residual_only_in_the_ssal_run(run, built):
    model = built(run).net
    net = model.backbone
    last = torch.cat([b.bn3.weight for s in (1, 2, 3, 4) for b in net.get_submodule(f"layer{s}")])
    assert len(last) == 256 * 3 + 512 * 4 + 1024 * 6 + 2048 * 3  # every block's last norm
    assert torch.all(last == (0.0 if run.endswith("ssal") else 1.0))
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {1 - 0.9 ** (100 / 32)}  # every batch norm, branches too


@pytest.mark.parametrize(
    "run", ["cifar100/densenet190-40_baseline", "cifar100/densenet190-40_ssal"]
)
def test_densenet_dropout(run, module):
    drops = [m for m in module(run).net.backbone.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 * 31 and {d.p for d in drops} == {0.2}


def _shifts_and_flips(out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From outputs of a 12x12 image whose pixel (r, c) is 16 r + c: row shift, column shift
    and flip of each, read off two pixels near the centre."""
    a, b = out[:, 0, 5, 5].astype(int), out[:, 0, 5, 6].astype(int)
    flipped = (b % 16 - a % 16) == -1
    rows = a // 16 - 5
    cols = a % 16 - 5 - flipped.astype(int)
    return rows, cols, flipped


@pytest.mark.parametrize("run", [f"cifar100/{r}" for r in CIFAR])
def test_cifar_shift_is_keras_shift_and_fill(run):
    data = config(run)["data"]["init_args"]
    dm = InMemoryDataModule(**data)
    image = (16 * np.arange(12)[:, None] + np.arange(12)[None, :]).astype(np.uint8)
    n = 20000
    batch = torch.from_numpy(image).expand(n, 1, 12, 12).contiguous()
    out = dm.augment_batch(batch).numpy()
    rows, cols, flipped = _shifts_and_flips(out)
    for shifts in (rows, cols):
        freq = {s: float(np.mean(shifts == s)) for s in range(-5, 6)}
        assert freq[0] == pytest.approx(0.2, abs=0.015)  # 0 twice as likely
        for s in (-4, -3, -2, -1, 1, 2, 3, 4):
            assert freq[s] == pytest.approx(0.1, abs=0.012)
        assert freq[5] == freq[-5] == 0.0
    assert np.mean(flipped) == pytest.approx(0.5, abs=0.015)
    # the border the shift reveals repeats the edge pixel (Keras' 'reflect', numpy 'symmetric')
    padded = np.pad(image, 5, mode="symmetric")
    for i in range(0, n, 97):
        expected = padded[5 + rows[i] : 17 + rows[i], 5 + cols[i] : 17 + cols[i]]
        expected = expected[:, ::-1] if flipped[i] else expected
        assert np.array_equal(out[i, 0], expected)
    # ssal's own pipeline keeps uniform shifts of up to 5 and a mirror without the edge pixel
    own = yaml.safe_load((CONFIGS / f"{run}.yaml").read_text())["data"]["init_args"]
    out = InMemoryDataModule(**own).augment_batch(batch).numpy()
    rows, cols, flipped = _shifts_and_flips(out)
    assert rows.min() == -5 and rows.max() == 5
    i = int(np.argmax(rows == -5))
    expected = np.pad(image, 5, mode="reflect")[0:12, 5 + cols[i] : 17 + cols[i]]
    assert np.array_equal(out[i, 0], expected[:, ::-1] if flipped[i] else expected)
    with pytest.raises(ValueError, match="shift_draw must be one of"):
        InMemoryDataModule(**{**own, "shift_draw": "gauss"})


@pytest.mark.parametrize("run", [f"imagenet/{r}" for r in IMAGENET])
def test_imagenet_augmentation(run, tmp_path):
    from torchvision.transforms import v2

    write_image_folder(tmp_path)
    data = {**config(run)["data"]["init_args"], "data_dir": str(tmp_path), "num_workers": 0}
    dm = ImageFolderDataModule(**data)
    dm.setup()
    steps = dm.train_set.dataset.transform.transforms
    crop, jitter, flip = steps[:3]
    assert isinstance(crop, v2.RandomResizedCrop) and crop.scale == pytest.approx((0.3, 4 / 3))
    assert isinstance(jitter, v2.ColorJitter) and isinstance(flip, v2.RandomHorizontalFlip)
    for factor in (jitter.brightness, jitter.contrast, jitter.saturation):
        assert factor == pytest.approx((0.6, 1.4))
    assert jitter.hue is None
    assert len(dm.heldout_set) == 0 and dm.train_dataloader().drop_last is False
    assert dm.preprocessing().resize == 256 and dm.preprocessing().crop == (224, 224)
    with pytest.raises(ValueError, match="set decode_on_device false"):
        ImageFolderDataModule(**{**data, "decode_on_device": True})


def _fit_one_step(path: Path, data_dir: Path, files: list[str] | None, extra=()) -> int:
    args = [
        "fit",
        "--config",
        str(path),
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
    if files:
        args += ["--model.groupings.source", "[" + ", ".join(files) + "]"]
    return main(args)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_authors_config_trains_a_step_on_cpu(run, tmp_path, monkeypatch):
    """Real-format files (CIFAR-100 python pickles, an ImageNet-style folder of two classes)
    and the authors' groupings files, written here in their format."""
    monkeypatch.chdir(tmp_path)
    cfg = config(run)
    files = None
    if run.startswith("cifar100"):
        write_cifar100(tmp_path / "data", n_train=64, n_test=8)
        if cfg["model"]["groupings"]["source"]:
            files = label_files(tmp_path, cfg["model"]["groupings"]["source"], 100)
        extra = ()
    else:
        write_image_folder(tmp_path / "data")
        if cfg["model"]["groupings"]["source"]:
            files = label_files(tmp_path, cfg["model"]["groupings"]["source"], 2, groups=2)
        extra = ("--data.init_args.num_workers", "0")
    dataset, name = run.split("/")
    path = CONFIGS / dataset / "authors" / f"{name}.yaml"
    assert _fit_one_step(path, tmp_path / "data", files, extra) == 0
