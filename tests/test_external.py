"""SSAL on the models people already use: timm and torchvision backbones by name, pretrained
weights from a file, and ONNX export."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import ssal
from ssal.args import GroupingArgs, NetworkArgs
from ssal.backbones import default_groupings
from ssal.backbones.external import scale_layout, stage_positions
from ssal.backbones.families.imagenet import IMAGENET_LAYOUTS
from ssal.cli import main
from ssal.grouping import Grouping, save_groupings
from tests.test_data import write_image_folder

timm = pytest.importorskip("timm")
TIMM, TORCHVISION = "timm/mobilenetv3_small_050", "torchvision/mobilenet_v3_small"


def test_default_positions_are_the_stages_at_a_quarter_half_and_three_quarters():
    # timm: feature_info's stages past the stem (reductions 4, 8, 16, 32): the first three
    entry = ssal.get_entry("timm/resnet18")
    assert entry.branches.positions == ("layer1", "layer2", "layer3")
    info = [f["module"] for f in timm.create_model("mobilenetv3_small_050").feature_info]
    assert ssal.get_entry(TIMM).branches.positions == tuple(info[1:4])
    # torchvision: the modules that end each resolution; a block that stays at one
    # resolution stands for its children (layer3, not layer3.5)
    assert ssal.get_entry("torchvision/resnet50").branches.positions == (
        "layer1",
        "layer2",
        "layer3",
    )
    assert ssal.get_entry("torchvision/efficientnet_b0").branches.positions == (
        "features.2", "features.3", "features.5",
    )  # fmt: skip
    import torchvision

    names, channels = stage_positions(torchvision.models.resnet18(), (3, 224, 224))
    assert names == ["layer1", "layer2", "layer3", "layer4"] and channels == [64, 128, 256, 512]


def test_default_layouts_are_the_imagenet_branches_scaled_to_the_backbone():
    # ResNet-18 is a quarter as wide as ResNet-50 where the branches read
    entry = ssal.get_entry("torchvision/resnet18")
    assert entry.branches.layouts == tuple(scale_layout(lay, 0.25) for lay in IMAGENET_LAYOUTS)
    assert scale_layout("cbr(256,3,2) inception_c inception_e(2) gap", 0.25) == (
        "cbr(64,3,2) inception_c(0.125) inception_e(0.5) gap"
    )
    full = ssal.create_model("torchvision/resnet50", 1000, default_groupings(1000, (200, 334, 500)))
    ours = ssal.create_model("resnet50-imagenet", 1000, default_groupings(1000, (200, 334, 500)))
    assert full.num_parameters()["branches"] == ours.num_parameters()["branches"]


def test_unknown_names_are_one_line_with_close_matches(capsys):
    with pytest.raises(
        ValueError, match=r"timm has no model 'resnet81'; did you mean timm/resnet18"
    ):
        ssal.get_entry("timm/resnet81")
    with pytest.raises(ValueError, match=r"did you mean torchvision/resnet18"):
        ssal.get_entry("torchvision/resnet81")
    assert main(["bench", "--model", "timm/resnet81", "--steps", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "did you mean timm/resnet18" in err[0]


def test_timm_missing_is_one_line_saying_how_to_install(monkeypatch):
    import builtins

    from ssal.backbones.families import timm_models

    real = builtins.__import__
    monkeypatch.setattr(
        builtins,
        "__import__",
        lambda name, *a, **k: (
            (_ for _ in ()).throw(ImportError(name)) if name == "timm" else real(name, *a, **k)
        ),
    )
    timm_models.timm_entry.cache_clear()
    with pytest.raises(ValueError, match=r"pip install 'ssal\[timm\]'"):
        ssal.get_entry("timm/resnet34")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_image_folder(root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", [TIMM, TORCHVISION])
def test_external_backbone_from_a_config_trains_and_evaluates(name, folder, tmp_path):
    import yaml

    groupings = save_groupings(tmp_path / "g.json", [Grouping([0, 1]), Grouping([1, 0])])
    config = {
        "trainer": {"max_steps": 2, "accelerator": "cpu", "default_root_dir": str(tmp_path)},
        "data": {
            "class_path": "ssal.data.ImageFolderDataModule",
            "init_args": {
                "data_dir": str(folder),
                "image_size": 96,
                "batch_size": 4,
                "eval_batch_size": 4,
                "num_workers": 0,
                "heldout": 0,
            },
        },  # fmt: skip
        "model": {
            "network": {"name": name},
            "groupings": {"source": str(groupings)},
            "optim": {"lr": 0.01, "warmup_epochs": 1},
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(tmp_path / "c.yaml")]) == 0
    ckpt = tmp_path / "runs/ssal/version_0/checkpoints/last.ckpt"
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == name and result["num_samples"] == 4
    assert len(result["branch_accuracy"]) == 2  # the two deepest default positions
    model, card = ssal.load_checkpoint(ckpt)
    assert card.positions == tuple(ssal.get_entry(name).branches.positions[1:])
    # trained at 96 x 96 (the registry's default is 224): the checkpoint says so, and an
    # ONNX export takes 96 x 96 images and predicts what the checkpoint predicts
    assert card.input_size == (3, 96, 96) and model.input_size == (3, 96, 96)
    if name == TORCHVISION:
        pytest.importorskip("onnxruntime")
        export = tmp_path / "onnx"
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(export), "--format",
                     "onnx"]) == 0  # fmt: skip
        images = sorted(str(p) for p in (folder / "val").rglob("*.png"))
        docs = []
        for source in (ckpt, export):
            out = tmp_path / f"{source.name}.jsonl"
            assert main(["predict", "--checkpoint", str(source), *images, "--out", str(out)]) == 0
            docs.append([json.loads(line) for line in out.read_text().splitlines()])
        assert len(docs[0]) == len(images)
        for a, b in zip(*docs, strict=True):
            assert a["fine"]["class"] == b["fine"]["class"]
            assert a["joint"]["prob"] == pytest.approx(b["joint"]["prob"], abs=1e-4)
            assert [x["group"] for x in a["branches"]] == [x["group"] for x in b["branches"]]


def test_pretrained_file_loads_the_backbone_and_leaves_the_branches_fresh(tmp_path):
    from ssal.train import SSALModule

    source = ssal.create_model(TORCHVISION, 10).backbone
    torch.save(source.state_dict(), tmp_path / "backbone.pt")
    g = save_groupings(
        tmp_path / "g.json", [Grouping(np.arange(10) % 2)] + [Grouping(np.arange(10) % 5)]
    )
    torch.manual_seed(123)
    network = NetworkArgs(TORCHVISION, pretrained=str(tmp_path / "backbone.pt"))
    module = SSALModule(network, 10, groupings=GroupingArgs(str(g)))
    for key, value in source.state_dict().items():
        assert torch.equal(module.net.backbone.state_dict()[key], value), key
    torch.manual_seed(123)
    fresh = ssal.create_model(TORCHVISION, 10, [np.arange(10) % 2, np.arange(10) % 5])
    for (k, a), (_, b) in zip(
        module.net.branches.state_dict().items(), fresh.branches.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k  # initialised as any new branch, nothing from the file
    # safetensors, and another number of classes: the classifier starts fresh, nothing else
    from safetensors.torch import save_file

    save_file(
        dict(ssal.create_model(TORCHVISION, 1000).backbone.state_dict()),
        str(tmp_path / "b.safetensors"),
    )
    model = ssal.create_model(TORCHVISION, 10, pretrained=str(tmp_path / "b.safetensors"))
    assert model.backbone.classifier[-1].out_features == 10
    with pytest.raises(ValueError, match="weights do not fit the backbone"):
        ssal.create_model("torchvision/resnet18", 10, pretrained=str(tmp_path / "backbone.pt"))
    with pytest.raises(ValueError, match="no published weights; give a file"):
        ssal.create_model("small-cnn", 10, pretrained=True)


def test_published_weights_without_network_are_one_line_naming_the_file(monkeypatch, tmp_path):
    """No network and no cached file: at once (no minute of retries), one line that says
    which file must be where."""
    import socket
    import time

    def no_network(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(ValueError) as tv:
        ssal.create_model("torchvision/resnet18", 10, pretrained=True)
    with pytest.raises(ValueError) as tm:
        ssal.create_model(TIMM, 10, pretrained=True)
    assert time.perf_counter() - start < 20
    file = tmp_path / "hub/checkpoints/resnet18-f37072fd.pth"
    assert f"the file must be in {file}" in str(tv.value)
    assert "Hugging Face repository timm/mobilenetv3_small_050." in str(tm.value)
    for e in (tv.value, tm.value):
        assert "\n" not in str(e) and str(e).endswith("or give --model.network.pretrained PATH")


class RecordAtStart(L.Callback):
    """Saves the network's weights as training starts (step 0), for the test below."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save({k: v.clone() for k, v in pl_module.net.state_dict().items()}, self.out)


@pytest.mark.slow
def test_pretrained_file_through_ssal_fit(folder, tmp_path, capsys):
    """The fine-tuning config with ``--model.network.pretrained PATH``: at step 0 the backbone holds
    the file's weights and the branches are what a fresh model's are; the backbone learns at
    a tenth of the branches' rate."""
    import yaml

    source = ssal.create_model(TIMM, 2).backbone
    torch.save(source.state_dict(), tmp_path / "backbone.pt")
    g = save_groupings(tmp_path / "g.json", [Grouping([0, 1]), Grouping([1, 0])])
    record = {"class_path": f"{__name__}.RecordAtStart", "init_args": {"out": str(tmp_path / "w")}}
    extra = {"trainer": {"callbacks": [record], "default_root_dir": str(tmp_path)}}
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(extra))
    config = Path(__file__).resolve().parents[1] / "configs/finetune/timm-resnet18_ssal.yaml"
    args = ["fit", "--config", str(config), "--config", str(tmp_path / "extra.yaml")]
    args += ["--model.network.name", TIMM]
    args += ["--model.network.pretrained", str(tmp_path / "backbone.pt")]
    args += ["--model.groupings.source", str(g), "--trainer.max_steps", "1"]
    args += ["--trainer.accelerator", "cpu", "--data.init_args.data_dir", str(folder)]
    for key, value in (("num_workers", 0), ("batch_size", 4), ("image_size", 64)):
        args += [f"--data.init_args.{key}", str(value)]
    assert main(args) == 0
    assert " parameters, at most 15 epochs or 1 step on cpu" in capsys.readouterr().err
    seen = torch.load(tmp_path / "w", weights_only=True)
    for k, v in source.state_dict().items():
        assert torch.equal(seen[f"backbone.{k}"], v), k
    torch.manual_seed(0)  # the config's seed_everything: the branches of a fresh model
    fresh = ssal.create_model(TIMM, 2, [[0, 1], [1, 0]]).branches.state_dict()
    assert fresh and all(torch.equal(seen[f"branches.{k}"], v) for k, v in fresh.items())
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True)
    assert ckpt["hyper_parameters"]["optim"]["backbone_lr_factor"] == 0.1


@pytest.mark.slow
def test_onnx_export_matches_pytorch_and_predicts_the_same(tmp_path, capsys):
    from PIL import Image

    from tests.test_predict_images import write_checkpoint

    onnxruntime = pytest.importorskip("onnxruntime")
    ckpt = write_checkpoint(tmp_path, "grey")
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--format", "onnx"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "ssal.json"]
    info = json.loads((out / "ssal.json").read_text())
    assert info["onnx_heads"] == ["logits", "branch1", "branch2"]
    model, _ = ssal.load_checkpoint(ckpt)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == info["onnx_heads"]
    for n in (1, 7):
        x = torch.randn(n, 1, 28, 28)
        with torch.no_grad():
            ref = model(x)
        got = session.run(None, {"images": x.numpy()})
        for a, b in zip(got, (ref.logits, *ref.branch_logits), strict=True):
            assert a.shape == tuple(b.shape)
            np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        images.append(str(tmp_path / f"{i}.png"))
    capsys.readouterr()
    docs = []
    for source in (ckpt, out):
        assert (
            main(["predict", "--checkpoint", str(source), *images, "--json", "--top-k", "2"]) == 0
        )
        docs.append(json.loads(capsys.readouterr().out)["predictions"])
    for a, b in zip(*docs, strict=True):
        for head in ("fine", "joint"):
            assert a[head]["class"] == b[head]["class"]
            assert a[head]["prob"] == pytest.approx(b[head]["prob"], abs=1e-4)
        assert [x["group"] for x in a["branches"]] == [x["group"] for x in b["branches"]]
        assert a["consistent"] == b["consistent"]
    # evaluation needs the weights: an ONNX export is one line saying so, nothing written
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--json", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an ONNX export, which only `ssal predict` runs" in err[0]
    assert not (tmp_path / "e.json").exists()
