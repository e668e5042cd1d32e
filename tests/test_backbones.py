import numpy as np
import pytest
import torch

import ssal
from ssal.backbones.registry import default_groupings, get_entry, list_models

PAPER_PARAMS = {n: get_entry(n).paper_params for n in list_models() if get_entry(n).paper_params}


def counts(name: str, groups=(20, 33, 50)) -> tuple[int, int]:
    with torch.device("meta"):
        base = ssal.create_model(name, 100).num_parameters()["total"]
        full = ssal.create_model(name, 100, default_groupings(100, groups)).num_parameters()
    return base, full["total"]


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_parameter_counts_match_paper(name):
    base, full = counts(name)
    paper_base, paper_ssal = PAPER_PARAMS[name]
    assert abs(base / 1e6 - paper_base) / paper_base < 0.03
    if name in ("resnet50", "densenet190-40"):
        assert abs(full / 1e6 - paper_ssal) / paper_ssal < 0.05


def test_known_architecture_counts():
    # WRN-28-10 for CIFAR-100 is 36.5M in Zagoruyko & Komodakis; torchvision ResNet-50 with a
    # 1000-way head has 25,557,032 parameters.
    assert counts("wrn28-10")[0] == pytest.approx(36.5e6, rel=0.01)
    with torch.device("meta"):
        m = ssal.create_model("resnet50-imagenet", 1000)
    assert m.num_parameters()["total"] == 25_557_032


def test_paper_positions_are_module_names():
    assert ssal.get_entry("resnet50").positions == ("layer1", "layer2", "layer3")
    assert ssal.get_entry("wrn28-10").positions == ("group1.1", "group2.1", "group2")
    assert ssal.get_entry("densenet190-40").positions == ("block1", "block2:input", "block3:input")


def test_registry_names_and_families():
    names = ssal.list_models()
    for n in [
        "resnet50",
        "sewrn16-8",
        "wrn28-10",
        "densenet190-40",
        "resnet50-imagenet",
        "small-cnn",
        "tiny-wrn",
        "wrn-16-4",
        "densenet-bc-100-12",
    ]:
        assert n in names
    assert ssal.get_entry("wrn-40-2").name == "wrn-40-2"
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        ssal.get_entry("nope")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        ssal.create_model("wrn-15-2")


def test_groupings_must_fit():
    # fewer groupings than positions: the deepest positions (and their layouts)
    entry = ssal.get_entry("tiny-wrn")
    two = ssal.create_model("tiny-wrn", 10, [np.arange(10) % 2] * 2)
    assert two.positions == list(entry.positions[1:])
    assert two.layouts == list(entry.layouts[1:])
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
    classes = 1000 if name.endswith("imagenet") else 100
    model = ssal.create_model(name, classes, default_groupings(classes, entry.paper_groups))
    with torch.no_grad():
        out = model.eval()(torch.randn(2, *entry.input_size))
    assert out.logits.shape == (2, classes)
    assert [b.shape[1] for b in out.branch_logits] == list(entry.paper_groups)
    assert all(torch.isfinite(b).all() for b in out.branch_logits)
