"""The model registry: every named variant with the paper's positions, layouts and weights.

``create_model(name, num_classes, groupings)`` is the single door in; ``list_models()`` shows
what exists. Families (``wrn-D-W``, ``sewrn-D-W``, ``densenet-bc-D-K``) are patterns whose
numbers are read from the name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ssal.backbones.densenet import DenseNetBC
from ssal.backbones.resnet import PreActResNet, resnet50_imagenet
from ssal.backbones.small import SmallCNN
from ssal.backbones.wrn import WideResNet
from ssal.grouping import Grouping, as_grouping
from ssal.model import BranchSpec, SSALModel

__all__ = ["ModelEntry", "create_model", "get_entry", "list_models", "register_model"]

# The paper's CIFAR branch layouts.
RESNET_LAYOUTS = (
    "cbr(128,5,2) cbr(128,3) inception gap",
    "cbr(128,5) cbr(128,3) inception gap",
    "cbr(128,3) cbr(128,3) inception gap",
)
WIDE_LAYOUTS = (
    "cbr(128,5,2) cbr(128,3) cbr cbr inception inception gap",
    "cbr(128,5) cbr(128,3) cbr cbr gap dense(768)",
    "cbr(128,3) cbr(128,3) inception inception gap",
)
# The authors' ImageNet branches: reduced Inception-v3 C, D, E blocks.
IMAGENET_LAYOUTS = (
    "cbr(256,3,2) inception_c inception_d inception_e inception_d inception_e(2) gap",
    "inception_c inception_d inception_e inception_d inception_e(2) gap",
    "inception_c inception_d inception_e(2) gap",
)
SMALL_LAYOUTS = ("cbr(32,3,2) cbr(32,3) gap", "cbr(64,3) gap", "cbr(64,3) gap")
SMALL_CNN_LAYOUTS = ("cbr(32,3,2) gap", "cbr(48,3,2) gap", "cbr(64,3) gap")


@dataclass(frozen=True)
class ModelEntry:
    """A named model: how to build its backbone and where its SSAL branches go."""

    name: str
    build: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    positions: tuple[str, ...]
    layouts: tuple[str, ...]
    weights: tuple[float, ...]
    alpha: float
    paper_positions: tuple[tuple[int, int], ...] = ()
    paper_groups: tuple[int, ...] = (20, 33, 50)
    description: str = ""
    defaults: dict = field(default_factory=dict)


_MODELS: dict[str, Callable[[], ModelEntry]] = {}
_FAMILIES: list[tuple[re.Pattern, Callable[[re.Match], ModelEntry], str]] = []


def register_model(name: str) -> Callable[[Callable[[], ModelEntry]], Callable[[], ModelEntry]]:
    """Decorator: register a function returning the ``ModelEntry`` of ``name``."""

    def wrap(fn: Callable[[], ModelEntry]) -> Callable[[], ModelEntry]:
        _MODELS[name] = fn
        return fn

    return wrap


def register_family(pattern: str, example: str) -> Callable:
    """Decorator: register a family of models whose names match ``pattern``."""

    def wrap(fn: Callable[[re.Match], ModelEntry]) -> Callable[[re.Match], ModelEntry]:
        _FAMILIES.append((re.compile(pattern + r"\Z"), fn, example))
        return fn

    return wrap


def list_models(families: bool = True) -> list[str]:
    """Registered names; with ``families``, one example per family too (e.g. ``wrn-16-4``)."""
    names = list(_MODELS)
    if families:
        names += [example for _, _, example in _FAMILIES if example not in names]
    return names


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ``ValueError`` listing the known names otherwise."""
    if name in _MODELS:
        return _MODELS[name]()
    for pattern, fn, _ in _FAMILIES:
        m = pattern.match(name)
        if m:
            return fn(m)
    known = ", ".join(list_models())
    raise ValueError(f"unknown model {name!r}; known: {known} (families take other numbers)")


def _default_groupings(num_classes: int, sizes: Sequence[int]) -> list[Grouping]:
    """Placeholder groupings (class c -> c mod G) used to build and count a model."""
    return [Grouping(np.arange(num_classes) % g, name=f"modulo-{g}") for g in sizes]


def create_model(
    name: str,
    num_classes: int = 100,
    groupings: Sequence[Grouping | np.ndarray | Sequence[int]] | None = None,
    *,
    in_channels: int | None = None,
    positions: Sequence[str] | None = None,
    layouts: Sequence[str] | None = None,
    **backbone_kwargs: object,
) -> SSALModel:
    """Build a registered model; ``groupings=None`` gives the plain baseline (no branches).

    One grouping per branch, in the entry's position order; ``positions``/``layouts``
    override the entry's (module names and layout strings).
    """
    entry = get_entry(name)
    c_in = in_channels or entry.input_size[0]
    backbone = entry.build(num_classes=num_classes, in_channels=c_in, **backbone_kwargs)
    specs: list[BranchSpec] = []
    if groupings is not None:
        groupings = [as_grouping(g) for g in groupings]
        pos = list(positions or entry.positions)
        lay = list(layouts or entry.layouts)
        if len(lay) == 1 and len(pos) > 1:
            lay = lay * len(pos)
        if not (len(groupings) == len(pos) == len(lay)):
            raise ValueError(
                f"{name}: {len(groupings)} groupings for {len(pos)} branch positions and "
                f"{len(lay)} layouts; give one grouping per branch"
            )
        for g in groupings:
            if g.num_classes != num_classes:
                raise ValueError(
                    f"grouping {g.name!r} covers {g.num_classes} classes, model has {num_classes}"
                )
        specs = [BranchSpec(p, lay_, g) for p, lay_, g in zip(pos, lay, groupings, strict=True)]
    model = SSALModel(backbone, specs, input_size=(c_in, *entry.input_size[1:]))
    model.name = name  # type: ignore[assignment]
    return model


def _wrn_entry(name: str, depth: int, width: int, se: bool) -> ModelEntry:
    n = (depth - 4) // 6
    half = max(1, n // 2)
    paper = ((2, half), (3, half), (3, -1))
    return ModelEntry(
        name=name,
        build=lambda **kw: WideResNet(depth, width, se_ratio=16 if se else 0, **kw),
        input_size=(3, 32, 32),
        positions=tuple(WideResNet.position(s, k) for s, k in paper),
        layouts=WIDE_LAYOUTS,
        weights=(0.8, 0.9, 1.0),
        alpha=0.4,
        paper_positions=paper,
        description=f"{'SE-' if se else ''}WRN-{depth}-{width}, pre-activation"
        + (", squeeze-excitation ratio 16" if se else ""),
    )


def _densenet_entry(name: str, depth: int, growth: int) -> ModelEntry:
    paper = ((1, -1), (2, 0), (3, 0))
    return ModelEntry(
        name=name,
        build=lambda **kw: DenseNetBC(depth, growth, **kw),
        input_size=(3, 32, 32),
        positions=tuple(DenseNetBC.position(s, k) for s, k in paper),
        layouts=WIDE_LAYOUTS,
        weights=(0.8, 0.9, 1.0),
        alpha=0.5,
        paper_positions=paper,
        description=f"DenseNet-BC-{depth}, growth {growth}, compression 0.5",
    )


@register_model("resnet50")
def _resnet50() -> ModelEntry:
    paper = ((1, -1), (2, -1), (3, -1))
    return ModelEntry(
        name="resnet50",
        build=lambda **kw: PreActResNet((3, 4, 6, 3), **kw),
        input_size=(3, 32, 32),
        positions=tuple(PreActResNet.position(s, k) for s, k in paper),
        layouts=RESNET_LAYOUTS,
        weights=(0.42, 0.59, 0.76),
        alpha=0.3,
        paper_positions=paper,
        description="pre-activation ResNet-50 for CIFAR (5x5 stem, no max-pool)",
    )


@register_model("sewrn16-8")
def _sewrn16_8() -> ModelEntry:
    return _wrn_entry("sewrn16-8", 16, 8, se=True)


@register_model("wrn28-10")
def _wrn28_10() -> ModelEntry:
    return _wrn_entry("wrn28-10", 28, 10, se=False)


@register_model("densenet190-40")
def _densenet190_40() -> ModelEntry:
    return _densenet_entry("densenet190-40", 190, 40)


@register_model("resnet50-imagenet")
def _resnet50_imagenet() -> ModelEntry:
    return ModelEntry(
        name="resnet50-imagenet",
        build=resnet50_imagenet,
        input_size=(3, 224, 224),
        positions=("layer1", "layer2", "layer3"),
        layouts=IMAGENET_LAYOUTS,
        weights=(1.0, 1.0, 1.0),
        alpha=0.3,
        paper_positions=((1, -1), (2, -1), (3, -1)),
        paper_groups=(200, 334, 500),
        description="torchvision ResNet-50 for ImageNet with the authors' Inception branches",
    )


@register_model("small-cnn")
def _small_cnn() -> ModelEntry:
    return ModelEntry(
        name="small-cnn",
        build=lambda **kw: SmallCNN(**kw),
        input_size=(1, 28, 28),
        positions=("stage1", "stage2", "stage3"),
        layouts=SMALL_CNN_LAYOUTS,
        weights=(1.0, 1.0, 1.0),
        alpha=0.3,
        paper_positions=((1, -1), (2, -1), (3, -1)),
        paper_groups=(2, 3, 5),
        description="6-conv CNN for Fashion-MNIST-sized images (the demo's network)",
    )


@register_family(r"wrn-(\d+)-(\d+)", "wrn-16-4")
def _wrn_family(m: re.Match) -> ModelEntry:
    return _wrn_entry(m.group(0), int(m.group(1)), int(m.group(2)), se=False)


@register_family(r"sewrn-(\d+)-(\d+)", "sewrn-16-8")
def _sewrn_family(m: re.Match) -> ModelEntry:
    return _wrn_entry(m.group(0), int(m.group(1)), int(m.group(2)), se=True)


@register_family(r"densenet-bc-(\d+)-(\d+)", "densenet-bc-100-12")
def _densenet_family(m: re.Match) -> ModelEntry:
    return _densenet_entry(m.group(0), int(m.group(1)), int(m.group(2)))


def _tiny_entry(kind: str) -> ModelEntry:
    """Tiny networks with tiny branches, for tests: WRN-10-1, DenseNet-BC-10-4, ResNet [1,1,1]."""
    if kind == "wrn":
        base = _wrn_entry("tiny-wrn", 10, 1, se=False)
        build: Callable[..., nn.Module] = lambda **kw: WideResNet(10, 1, **kw)  # noqa: E731
    elif kind == "densenet":
        base = _densenet_entry("tiny-densenet", 10, 4)
        build = lambda **kw: DenseNetBC(10, 4, **kw)  # noqa: E731
    else:
        base = _resnet50()
        build = lambda **kw: PreActResNet((1, 1, 1), base=8, stem_kernel=3, **kw)  # noqa: E731
    return ModelEntry(
        name=f"tiny-{kind}",
        build=build,
        input_size=(3, 32, 32),
        positions=base.positions,
        layouts=SMALL_LAYOUTS,
        weights=base.weights,
        alpha=base.alpha,
        paper_positions=base.paper_positions,
        paper_groups=(2, 3, 5),
        description=f"tiny {kind} for tests",
    )


for _kind in ("wrn", "densenet", "resnet"):
    register_model(f"tiny-{_kind}")(lambda kind=_kind: _tiny_entry(kind))
