"""Built SSAL models behave like any nn.Module: deep copies (EMA, SWA), pickling, compiling."""

import copy
import io

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

import ssal
from ssal.backbones import default_groupings

TINY = [n for n in ssal.list_models() if n.startswith("tiny-") or n == "small-cnn"]
BIG = [n for n in ssal.list_models() if n not in TINY]
# the families of `ssal models` beyond the listed names (wrn-D-W and the like build listed
# models' classes): timm's and torchvision's backbones by name
EXTERNAL = ["torchvision/resnet18", "timm/resnet18", "timm/convnext_atto"]
# transformers at small sizes: tokens (ViT, two prefix tokens in DeiT) and channels-last
# (Swin; 64 px: the ImageNet branches' grid reductions need 16 x 16 maps at the first stage)
TRANSFORMERS = {
    "timm/vit_tiny_patch16_224": 32,
    "timm/deit_tiny_distilled_patch16_224": 32,
    "timm/swin_tiny_patch4_window7_224": 64,
}


def external(name: str) -> str:
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    return name


def build(name: str, image_size: int | None = None) -> ssal.SSALModel:
    entry = ssal.get_entry(name)
    classes = 1000 if name.endswith("imagenet") else 100 if name not in TINY else 10
    sizes = entry.paper.groups if max(entry.paper.groups) < classes else (2, 3, 5)
    groupings = default_groupings(classes, sizes)
    return ssal.create_model(name, classes, groupings, image_size=image_size)


def batch(model: ssal.SSALModel, n: int) -> torch.Tensor:
    return torch.randn(n, *model.input_size)


def outputs(out: ssal.SSALOutput) -> list[torch.Tensor]:
    return [out.logits, *out.branch_logits]


def check_lifecycle(model: ssal.SSALModel) -> None:
    model.eval()
    x = batch(model, 2)
    with torch.no_grad():
        ref = outputs(model(x))
        # a deep copy computes the same and its hooks feed its own branches
        twin = copy.deepcopy(model)
        got = outputs(twin(x))
        assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
        assert all(t is None for t in model._taps) and all(t is None for t in twin._taps)
        model.backbone(
            x
        )  # outside forward (a checkpointed module run again) the hooks keep nothing
        assert all(t is None for t in model._taps)
        model._reading[0] = True  # while forward reads, the original's hooks fill its taps only
        model.backbone(x)
        model._reading[0] = False
        assert all(t is not None for t in model._taps)
        assert all(t is None for t in twin._taps)
        model._taps = [None] * len(model._taps)
        for p in twin.branches.parameters():  # the copy's branches are its own
            p.add_(1.0)
        changed = outputs(twin(x))
        assert not torch.equal(changed[-1], ref[-1]) and torch.equal(changed[0], ref[0])
        # torch.save of the whole module and back
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert all(torch.equal(a, b) for a, b in zip(ref, outputs(loaded(x)), strict=True))
    # AveragedModel (SWA/EMA) trains a step
    model.train()
    averaged = AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(x)
    loss = sum(o.float().logsumexp(-1).mean() for o in outputs(out))
    loss.backward()
    opt.step()
    averaged.update_parameters(model)
    averaged.eval()
    with torch.no_grad():
        avg = averaged(x)
    assert len(avg.branch_logits) == model.num_branches
    assert all(torch.isfinite(t).all() for t in outputs(avg))


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_copy_pickle_average(name):
    check_lifecycle(build(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", BIG)
def test_paper_models_copy_pickle_average(name):
    torch.manual_seed(0)
    check_lifecycle(build(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", EXTERNAL)
def test_external_models_copy_pickle_average(name):
    torch.manual_seed(0)
    check_lifecycle(build(external(name)))


def dynamo_fullgraph(model: ssal.SSALModel) -> None:
    """Dynamo traces the model with its branch hooks in one graph (no graph break); the eager
    backend checks the trace without compiling kernels."""
    torch._dynamo.reset()
    model.eval()
    x = batch(model, 2)
    with torch.no_grad():
        ref = outputs(model(x))
        got = outputs(torch.compile(model, fullgraph=True, backend="eager")(x))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, got, strict=True))


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_trace_without_graph_breaks(name):
    dynamo_fullgraph(build(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", BIG)
def test_paper_models_trace_without_graph_breaks(name):
    dynamo_fullgraph(build(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", EXTERNAL)
def test_external_models_trace_without_graph_breaks(name):
    dynamo_fullgraph(build(external(name)))


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformers_copy_pickle_average_and_trace(name):
    torch.manual_seed(0)
    model = build(external(name), image_size=TRANSFORMERS[name])
    check_lifecycle(model)
    dynamo_fullgraph(model)
