import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssal
from ssal.backbones import default_groupings, get_entry, list_models
from ssal.backbones.wrn import WideBlock
from ssal.conventions import Style, TFSameConv2d, keras_parameter_count, torch_parameter_count

PAPER_PARAMS = {n: get_entry(n).paper.params for n in list_models() if get_entry(n).paper.params}

# What the authors' code builds, counted by Keras (batch norm's moving statistics and conv
# biases included): (baseline, with branches of 20/33/50 groups) for 100 classes.
AUTHORS_KERAS_COUNTS = {
    "wrn28-10": (36_564_932, 43_248_387),
    "resnet50": (23_772_644, 28_886_131),
    "densenet190-40": (26_078_580, 38_287_795),
}
# The standard variants of the paper's networks (PyTorch counts, 100 classes, 20/33/50
# groups): what the paper's names built before they built the authors' networks.
STANDARD_COUNTS = {
    "preact-resnet50": (23_700_644, 28_801_351),
    "wrn-28-10": (36_536_884, 43_200_995),
    "sewrn-16-8": (11_095_460, 17_378_643),
    "densenet-bc-190-40": (25_821_620, 38_011_491),
}


def build(name: str, classes: int = 100, groups=(20, 33, 50), meta: bool = True):
    with torch.device("meta" if meta else "cpu"):
        base = ssal.create_model(name, classes)
        full = ssal.create_model(name, classes, default_groupings(classes, groups))
    return base, full


def counts(name: str, count=torch_parameter_count, **kw) -> tuple[int, int]:
    base, full = build(name, **kw)
    return count(base), count(full)


@pytest.mark.parametrize("name", list(AUTHORS_KERAS_COUNTS))
def test_paper_models_have_the_authors_parameter_counts(name):
    assert counts(name, keras_parameter_count) == AUTHORS_KERAS_COUNTS[name]
    assert get_entry(name).paper.authors_params == AUTHORS_KERAS_COUNTS[name]


def test_imagenet_resnet50_has_the_authors_parameter_count():
    # torchvision's ResNet-50 has 25,557,032; the authors' branches for 200/334/500 groups
    # bring it to 37,453,730 (PyTorch's count, as their script prints it)
    base, full = counts("resnet50-imagenet", classes=1000, groups=(200, 334, 500))
    assert (base, full) == (25_557_032, 37_453_730)


@pytest.mark.parametrize("name", list(STANDARD_COUNTS))
def test_standard_variants_have_their_parameter_counts(name):
    assert counts(name) == STANDARD_COUNTS[name]


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_baseline_counts_near_the_papers_table(name):
    base, _ = counts(name, keras_parameter_count)
    assert abs(base / 1e6 - PAPER_PARAMS[name][0]) / PAPER_PARAMS[name][0] < 0.03


def _block_sizes(branch: nn.Sequential) -> list[int]:
    """Side of the feature map after each block of a branch, for a 224x224 image (meta)."""
    sizes: list[int] = []
    for block in list(branch)[:-2]:  # the last two: gap and the linear layer
        block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    return sizes


def test_imagenet_branch_feature_maps_for_224_input():
    _, model = build("resnet50-imagenet", 1000, (200, 334, 500))
    found = [_block_sizes(b) for b in model.branches]
    model(torch.zeros(1, 3, 224, 224, device="meta"))
    # branch 1: unpadded stride-2 cbr 56 -> 27, C 27, D 13, E 13, D 6, E 6; branch 2 from 28;
    # branch 3 from 14
    assert found == [[27, 27, 13, 13, 6, 6], [28, 13, 13, 6, 6], [14, 6, 6]]


def _norms(module: nn.Module) -> set[tuple[float, float]]:
    return {(m.eps, m.momentum) for m in module.modules() if isinstance(m, nn.BatchNorm2d)}


KERAS_BN = (1e-3, 0.01)


@pytest.mark.parametrize(
    "name,backbone,branches",
    [
        ("resnet50", {(1e-3, 0.35)}, {KERAS_BN}),
        ("wrn28-10", {KERAS_BN}, {KERAS_BN}),
        ("sewrn16-8", {KERAS_BN}, {KERAS_BN}),
        ("densenet190-40", {(1.1e-5, 0.01)}, {KERAS_BN}),
        ("resnet50-imagenet", {(1e-5, 0.1)}, {(1e-3, 0.1)}),
        ("preact-resnet50", {(1e-5, 0.1)}, {(1e-5, 0.1)}),
        ("wrn-28-10", {(1e-5, 0.1)}, {(1e-5, 0.1)}),
    ],
)
def test_batch_norm_settings(name, backbone, branches):
    entry = get_entry(name)
    _, model = build(name, entry.paper.classes, entry.paper.groups)
    assert _norms(model.backbone) == backbone
    assert _norms(model.branches) == branches


def _sizes(model: nn.Module, names: list[str], size: int = 32) -> list[int]:
    found: list[int] = []
    for n in names:
        model.get_submodule(n).register_forward_hook(lambda m, i, o: found.append(o.shape[-1]))
    model(torch.zeros(1, 3, size, size, device="meta"))
    return found


def test_resnet50_last_stage_stays_at_8x8():
    layers = ["layer1", "layer2", "layer3", "layer4"]
    assert _sizes(build("resnet50")[0].backbone, layers) == [32, 16, 8, 8]
    assert _sizes(build("preact-resnet50")[0].backbone, layers) == [32, 16, 8, 4]


def test_wrn_block_order_post_activation():
    torch.manual_seed(0)
    style = get_entry("wrn28-10").network.build.keywords["style"]
    block = WideBlock(4, 6, 1, style=style, post_activation=True).eval()
    x = torch.randn(2, 4, 5, 5)
    o = torch.relu(block.bn1(block.conv1(x)))
    o = torch.relu(block.bn2(block.conv2(o)))
    assert torch.allclose(block(x), o + block.shortcut(x))
    assert block.conv1.bias is not None and block.shortcut.kernel_size == (1, 1)
    pre = WideBlock(6, 6, 1).eval()  # Zagoruyko & Komodakis: BN-ReLU before each conv
    y = torch.randn(2, 6, 5, 5)
    a = torch.relu(pre.bn1(y))
    assert torch.allclose(pre(y), pre.conv2(torch.relu(pre.bn2(pre.conv1(a)))) + y)


def test_wrn28_10_is_the_authors_post_activation_network():
    net = build("wrn28-10")[0].backbone
    assert [type(m) for m in net.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert isinstance(net.pool1, nn.MaxPool2d) and net.pool1.kernel_size == 2
    assert isinstance(net.head, nn.Identity)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None and c.stride == (1, 1) for c in convs)
    shortcuts = [n for n, m in net.named_modules() if n.endswith("shortcut") and m is not None]
    assert shortcuts == ["group1.0.shortcut", "group2.0.shortcut", "group3.0.shortcut"]
    assert _sizes(net, ["group1", "group2", "group3"]) == [32, 16, 8]


def test_keras_same_padding_puts_the_odd_pixel_last():
    torch.manual_seed(0)
    conv = Style(same="tf").conv(2, 3, 5, stride=2)
    assert isinstance(conv, TFSameConv2d)
    x = torch.randn(1, 2, 32, 32)  # TensorFlow pads 3 rows: 1 on top, 2 at the bottom
    expected = F.conv2d(F.pad(x, (1, 2, 1, 2)), conv.weight, conv.bias, stride=2)
    assert torch.equal(conv(x), expected) and expected.shape[-1] == 16
    odd = torch.randn(1, 2, 33, 33)  # 4 rows: 2 and 2
    assert torch.equal(conv(odd), F.conv2d(F.pad(odd, (2, 2, 2, 2)), conv.weight, conv.bias, 2))


def test_densenet_dropout_after_every_3x3_conv():
    net = build("densenet190-40")[0].backbone
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 * 31 and {d.p for d in drops} == {0.2}
    standard = build("densenet-bc-190-40")[0].backbone
    assert not any(isinstance(m, nn.Dropout) for m in standard.modules())


def test_paper_positions_are_module_names():
    assert ssal.get_entry("resnet50").branches.positions == ("layer1", "layer2", "layer3")
    assert ssal.get_entry("wrn28-10").branches.positions == ("group1.1", "group2.1", "group2")
    assert ssal.get_entry("densenet190-40").branches.positions == (
        "block1",
        "block2:input",
        "block3:input",
    )


def test_registry_names_and_families():
    names = ssal.list_models()
    for n in [
        "resnet50",
        "preact-resnet50",
        "sewrn16-8",
        "wrn28-10",
        "densenet190-40",
        "resnet50-imagenet",
        "small-cnn",
        "tiny-wrn",
        "wrn-28-10",
        "sewrn-16-8",
        "densenet-bc-190-40",
    ]:
        assert n in names
    assert ssal.get_entry("wrn-40-2").name == "wrn-40-2"
    assert ssal.get_entry("wrn-16-4").reference == "Zagoruyko & Komodakis 2016"
    assert ssal.get_entry("densenet-bc-100-12").branches.layouts[0].startswith("cbr")
    assert ssal.get_entry("wrn28-10").branches.layouts[0].startswith("keras: ")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        ssal.get_entry("nope")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        ssal.create_model("wrn-15-2")


def test_groupings_must_fit():
    # fewer groupings than positions: the deepest positions (and their layouts)
    entry = ssal.get_entry("tiny-wrn")
    two = ssal.create_model("tiny-wrn", 10, [np.arange(10) % 2] * 2)
    assert two.positions == list(entry.branches.positions[1:])
    assert two.layouts == list(entry.branches.layouts[1:])
    with pytest.raises(ValueError, match="4 groupings but tiny-wrn has 3 branch positions"):
        ssal.create_model("tiny-wrn", 10, [np.arange(10) % 2] * 4)
    with pytest.raises(ValueError, match="covers 8 classes, model has 10"):
        ssal.create_model("tiny-wrn", 10, [np.arange(8) % 2] * 3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["resnet50", "sewrn16-8", "wrn28-10", "densenet190-40", "resnet50-imagenet"]
)
def test_paper_models_forward_batch_2(name):
    entry = ssal.get_entry(name)
    classes = entry.paper.classes
    model = ssal.create_model(name, classes, default_groupings(classes, entry.paper.groups))
    with torch.no_grad():
        out = model.eval()(torch.randn(2, *entry.network.input_size))
    assert out.logits.shape == (2, classes)
    assert [b.shape[1] for b in out.branch_logits] == list(entry.paper.groups)
    assert all(torch.isfinite(b).all() for b in out.branch_logits)
