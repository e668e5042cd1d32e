import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import ssal
from ssal.model import BranchSpec, SSALModel
from tests.conftest import modulo_groupings


def test_no_branches_is_exactly_the_backbone():
    backbone = torchvision.models.resnet18(num_classes=10).eval()
    model = SSALModel(backbone).eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.branch_logits == ()
    assert torch.equal(out.logits, backbone(x))


def test_torchvision_backbone_by_module_name():
    backbone = torchvision.models.resnet18(num_classes=10)
    specs = [
        BranchSpec("layer1", "cbr(16,3,2) gap", np.arange(10) % 2),
        BranchSpec("layer3", "cbr(16,3)", np.arange(10) % 5),
    ]
    model = SSALModel(backbone, specs, input_size=(3, 64, 64))
    assert model.branches[0][0][0].in_channels == 64  # inferred from layer1
    assert model.branches[1][0][0].in_channels == 256
    out = model(torch.randn(3, 3, 64, 64))
    assert out.logits.shape == (3, 10)
    assert [b.shape for b in out.branch_logits] == [(3, 2), (3, 5)]
    assert model._taps == [None, None]  # no feature maps kept after the call


def test_timm_backbone():
    timm = pytest.importorskip("timm")
    backbone = timm.create_model("resnet10t", num_classes=6, pretrained=False)
    model = SSALModel(
        backbone, [BranchSpec("layer2", "cbr(8,3)", np.arange(6) % 3)], input_size=(3, 64, 64)
    )
    out = model(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 6) and out.branch_logits[0].shape == (2, 3)


def test_user_sequential_and_input_position():
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    model = SSALModel(
        backbone,
        [
            BranchSpec("2:input", "gap", np.array([0, 0, 1, 1])),
            BranchSpec("2", "gap", np.array([0, 1, 1, 0])),
        ],
        input_size=(1, 8, 8),
    )
    assert model.branches[0][-1].in_features == 4  # input of module "2" has 4 channels
    assert model.branches[1][-1].in_features == 8
    out = model(torch.randn(2, 1, 8, 8))
    assert [b.shape for b in out.branch_logits] == [(2, 2), (2, 2)]


def test_bad_position_suggests_names():
    with pytest.raises(ValueError, match="did you mean layer1"):
        SSALModel(torchvision.models.resnet18(), [BranchSpec("layer_1", "gap", [0, 1])])


def test_unused_or_flat_position_errors():
    backbone = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2 * 16, 3))
    with pytest.raises(ValueError, match=r"branches read \(N, C, H, W\) feature maps"):
        SSALModel(backbone, [BranchSpec("2", "gap", [0, 1, 1])], input_size=(1, 4, 4))


@pytest.mark.parametrize("name", ["tiny-wrn", "tiny-densenet", "tiny-resnet", "small-cnn"])
def test_gradients_reach_backbone_from_every_branch(name):
    entry = ssal.get_entry(name)
    model = ssal.create_model(name, 10, modulo_groupings(10))
    x = torch.randn(4, *entry.network.input_size)
    first = next(model.backbone.parameters())  # the stem: upstream of every branch
    for i in range(model.num_branches):
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.branch_logits[i].square().sum().backward()
        assert first.grad is not None and first.grad.abs().sum() > 0, f"branch {i}"
        assert model.backbone.fc.weight.grad is None  # the fine head is not involved
        others = [j for j in range(model.num_branches) if j != i]
        assert all(model.branches[j][-1].weight.grad is None for j in others)


def test_group_indices_in_state_dict():
    model = ssal.create_model("tiny-wrn", 10, modulo_groupings(10))
    sd = model.state_dict()
    assert torch.equal(sd["group_index_2"], torch.arange(10) % 5)
    assert [g.num_groups for g in model.groupings] == [2, 3, 5]


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    model = ssal.create_model("tiny-wrn", 10, modulo_groupings(10)).eval()
    x = torch.randn(2, 3, 32, 32)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)(x)  # fullgraph: hooks cause no graph break
    for a, b in zip(
        [eager.logits, *eager.branch_logits],
        [compiled.logits, *compiled.branch_logits],
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
