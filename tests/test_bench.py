import json

import numpy as np
import pytest
import torch
from torch import nn

from ssal.bench import count_flops
from ssal.cli import main
from ssal.data import normalize, shift_flip
from ssal.loss import SSALLoss
from ssal.model import SSALModel


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 8 * 8, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_flop_count_matches_hand_computation():
    model = SSALModel(TinyConvNet())
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    flops = count_flops(model, SSALLoss(), x, y)
    conv = 2 * (8 * 8) * 8 * (3 * 3 * 3)  # per image: 2 * outputs * (k*k*c_in)
    fc = 2 * 512 * 10
    assert flops["forward"] == conv + fc
    # backward: the linear layer needs input and weight gradients (2x its forward); the conv
    # only its weight gradient (the image needs none)
    assert flops["train"] == 2 * conv + 3 * fc


@pytest.mark.slow
def test_fast_path_loss_equals_plain_path_fp32():
    from ssal.backbones import create_model
    from tests.conftest import modulo_groupings

    torch.manual_seed(0)
    groupings = modulo_groupings(10)
    plain = create_model("tiny-wrn", 10, groupings).train()
    fast = create_model("tiny-wrn", 10, groupings).train()
    fast.load_state_dict(plain.state_dict())
    loss_fn = SSALLoss(groupings, [0.8, 0.9, 1.0])
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16) % 10
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    g = torch.Generator().manual_seed(1)
    augmented = shift_flip(images, 4, True, generator=g)
    # plain: float images, NCHW, eager
    x_plain = ((augmented.float() / 255) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[
        :, None, None
    ]
    ref = loss_fn(plain(x_plain), labels).total
    # fast: fused normalisation, channels_last, torch.compile
    fast = fast.to(memory_format=torch.channels_last)
    x_fast = normalize(augmented, mean, std).contiguous(memory_format=torch.channels_last)
    got = loss_fn(torch.compile(fast)(x_fast), labels).total
    assert abs(got.item() - ref.item()) < 1e-5


def test_bench_cpu_writes_every_key(tmp_path):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--model",
                "tiny-wrn",
                "--ssal",
                "--batch-size",
                "8",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    for key in (
        "model",
        "device",
        "precision",
        "batch_size",
        "train_images_per_s",
        "eval_images_per_s",
        "flops_per_image_train",
        "mfu",
        "peak_memory_bytes",
        "reference_train_images_per_s",
        "speedup",
        "ssal_overhead",
        "train_step_ms",
        "flops_per_image_forward",
    ):
        assert key in r, key
    assert r["device"] == "cpu" and r["batch_size"] == 8 and r["ssal"]
    assert r["train_images_per_s"] > 0 and r["reference_train_images_per_s"] > 0
    assert r["flops_per_image_train"] > 2 * r["flops_per_image_forward"]
    assert 0 < r["mfu"] < 1.5 and np.isfinite(r["speedup"])
    assert r["speedup"] == pytest.approx(
        r["train_images_per_s"] / r["reference_train_images_per_s"]
    )


def test_bench_profile_shows_where_the_step_goes(tmp_path):
    from ssal.bench import run_bench

    r = run_bench(
        "tiny-wrn",
        ssal=True,
        batch_size=4,
        steps=2,
        warmup=1,
        reference=False,
        compile_mode="default",
        profile=tmp_path / "prof",
    )
    assert r["compile_mode"] is None  # the mode only counts when compiling
    assert set(r["profile"]) == {"model", "backbone"}
    for part in ("model", "backbone"):
        folder = tmp_path / "prof" / part
        table = (folder / "fit-profile.txt").read_text()
        assert "aten::convolution_backward" in table and "Optimizer.step" in table
        assert list(folder.glob("*.pt.trace.json"))  # for Perfetto / chrome://tracing
    # the summary: the 15 most expensive operators (on a CPU) of one SSAL step, their share
    # of it, and the branches' part
    s = r["profile_summary"]
    assert s["unit"] == "operators' self CPU time" and s["steps"] == 2 and len(s["top"]) == 15
    shares = [row["share_of_step"] for row in s["top"]]
    assert shares == sorted(shares, reverse=True) and s["top_share_of_step"] == pytest.approx(
        sum(shares)
    )
    assert 0 < s["branch_share_of_kernel_time"] < 1 and s["kernel_ms_per_step"] > 0
    # two profiled CPU steps per model: which one took longer depends on the machine's load
    assert s["backbone_kernel_ms_per_step"] > 0
    for row in s["top"]:
        extra = row["ms_per_step"] - row["backbone_ms_per_step"]
        assert row["branch_ms_per_step"] == pytest.approx(max(0.0, extra))
    text = (tmp_path / "prof" / "kernels.txt").read_text()
    assert "aten::convolution_backward" in text and "of the SSAL step's time" in text


def test_profile_summary_splits_kernels_by_hand():
    from types import SimpleNamespace

    from ssal.profiling import profile_summary

    def kernel(name, us):
        span = SimpleNamespace(elapsed_us=lambda: us)
        return SimpleNamespace(name=name, device_type="DeviceType.CUDA", time_range=span)

    def step(us):
        span = SimpleNamespace(elapsed_us=lambda: us)
        return SimpleNamespace(name="ProfilerStep#3", device_type="DeviceType.CPU", time_range=span)

    # two SSAL steps: a conv kernel the backbone also runs (less of it), a fused kernel
    # numbered differently in each graph, and one only the branches run
    model = [step(1000), step(1000), kernel("sm90_conv", 600), kernel("sm90_conv", 600)]
    model += [kernel("triton_poi_fused_relu_7", 100), kernel("triton_red_fused_cat_3", 300)]
    backbone = [step(700), kernel("sm90_conv", 400), kernel("triton_poi_fused_relu_2", 100)]
    s = profile_summary(model, backbone)
    rows = {r["kernel"]: r for r in s["top"]}
    assert s["unit"] == "device kernels" and s["steps"] == 2
    assert s["kernel_ms_per_step"] == pytest.approx(0.8)  # (1200 + 100 + 300) us / 2 steps
    assert rows["sm90_conv"]["ms_per_step"] == pytest.approx(0.6)
    assert rows["sm90_conv"]["branch_ms_per_step"] == pytest.approx(0.2)
    assert rows["sm90_conv"]["where"] == "both (33% branches)"
    assert rows["triton_red_fused_cat"]["where"] == "branches"
    assert rows["triton_poi_fused_relu"]["branch_ms_per_step"] == 0  # 0.05 ms vs 0.1 ms
    assert rows["triton_poi_fused_relu"]["where"] == "backbone"
    assert s["branch_ms_per_step"] == pytest.approx(0.2 + 0.15)
    assert s["branch_share_of_kernel_time"] == pytest.approx(0.35 / 0.8)
    assert s["branch_only_kernels"] == 1 and s["step_wall_ms_profiled"] == pytest.approx(1.0)


def test_bench_on_an_image_folder_with_layouts(tmp_path):
    from ssal.bench import run_bench
    from tests.test_data import write_image_folder

    write_image_folder(tmp_path / "images", jpeg=True)
    r = run_bench(
        "tiny-wrn",
        ssal=True,
        batch_size=2,
        steps=2,
        warmup=1,
        image_folder=tmp_path / "images",
        workers=0,
        layouts=["cbr(8,3) inception(0.25,8) gap"],
    )
    assert r["num_classes"] == 2 and r["image_folder"] == str(tmp_path / "images")
    assert r["input_size"] == [3, 32, 32] and r["decode_on_device"] is False
    assert r["layouts"] == ["cbr(8,3) inception(0.25,8) gap"]
    assert r["train_images_per_s"] > 0 and r["reference_train_images_per_s"] > 0
    assert r["reference_workers"] == 0 and "projected_run_hours" not in r
    with pytest.raises(ValueError, match="1 or 3 branch layouts"):
        run_bench("tiny-wrn", ssal=True, layouts=["gap", "gap"])
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        run_bench("tiny-wrn", image_folder=tmp_path / "nowhere")


def test_compile_mode_is_checked():
    from ssal.args import SpeedArgs
    from ssal.train import SSALModule

    with pytest.raises(ValueError, match="compile_mode must be one of"):
        SSALModule({"name": "tiny-wrn"}, 10, speed=SpeedArgs(compile_mode="fastest"))
    speed = SpeedArgs(True, "max-autotune-no-cudagraphs")
    m = SSALModule({"name": "tiny-wrn"}, 10, speed=speed)
    assert m.hparams["speed"]["compile_mode"] == "max-autotune-no-cudagraphs"


def test_compile_mode_needs_compile(capsys):
    assert main(["bench", "--model", "small-cnn", "--compile-mode", "max-autotune"]) == 2
    assert "--compile-mode needs --compile" in capsys.readouterr().err
    assert main(["bench", "--model", "small-cnn", "--decode-on-device"]) == 2
    assert "need --image-folder" in capsys.readouterr().err
