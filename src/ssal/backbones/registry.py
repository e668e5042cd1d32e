"""The model registry: every named variant with its branch positions, layouts, weights, and the
facts that make it the network it is.

``create_model(name, num_classes, groupings)`` is the single door in; ``list_models()`` shows
what exists. The paper's names (``resnet50``, ``wrn28-10``, ``sewrn16-8``, ``densenet190-40``,
``resnet50-imagenet``) build the networks as the authors built them (their Keras code for
CIFAR, their PyTorch code for ImageNet): layer conventions, block order, initialisers, dropout
and branch layers included. The standard variants keep their own names: ``preact-resnet50``
and the families (``wrn-D-W``, ``sewrn-D-W``, ``densenet-bc-D-K``), whose numbers are read from
the name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import numpy as np
from torch import nn

from ssal.backbones.densenet import DenseNetBC
from ssal.backbones.resnet import PreActResNet, resnet50_imagenet
from ssal.backbones.small import SmallCNN
from ssal.backbones.weights import load_backbone_weights
from ssal.backbones.wrn import WideResNet
from ssal.conventions import KERAS_NORM, Norm, Style, keras_parameter_count, torch_parameter_count
from ssal.grouping import Grouping, as_grouping
from ssal.model import BranchSpec, SSALModel

__all__ = [
    "LEGACY_NAMES",
    "ModelEntry",
    "create_model",
    "default_groupings",
    "get_entry",
    "list_families",
    "list_models",
    "model_summary",
    "register_model",
]

AUTHORS_KERAS = "authors' Keras code"
# The layers of the authors' Keras backbones (keras/*_aux_tf.py and keras/train.py of their
# repository): batch norm settings, conv biases, Keras "same" padding and initialisers.
AUTHORS_RESNET = Style(
    norm=Norm(eps=1e-3, momentum=0.35),  # BatchNormalization(momentum=0.65)
    conv_bias=True,
    same="tf",
    conv_init="he_normal",
    linear_init="he_normal",
)
AUTHORS_WRN = Style(
    norm=KERAS_NORM,
    conv_bias=True,
    same="tf",
    conv_init="glorot_uniform",
    linear_init="glorot_uniform",
)
AUTHORS_DENSENET = Style(
    norm=Norm(eps=1.1e-5, momentum=0.01),
    same="tf",
    conv_init="orthogonal",
    linear_init="glorot_uniform",
)

# The paper's CIFAR branch layouts; ``keras:`` makes them with the authors' Keras layers.
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
# The authors' ImageNet branches: reduced Inception-v3 C, D, E blocks (pytorch/aux_nets.py);
# branch 1 first halves its 56x56 input with an unpadded 3x3 convolution.
IMAGENET_LAYOUTS = (
    "inception-v3: cbr(256,3,2,0) inception_c inception_d inception_e inception_d inception_e(2)"
    " gap",
    "inception-v3: inception_c inception_d inception_e inception_d inception_e(2) gap",
    "inception-v3: inception_c inception_d inception_e(2) gap",
)
SMALL_LAYOUTS = ("cbr(32,3,2) cbr(32,3) gap", "cbr(64,3) gap", "cbr(64,3) gap")
SMALL_CNN_LAYOUTS = ("cbr(32,3,2) gap", "cbr(48,3,2) gap", "cbr(64,3) gap")


def keras_layouts(layouts: Sequence[str]) -> tuple[str, ...]:
    """The same layouts made with the authors' Keras layers (``ssal.layouts.STYLES``)."""
    return tuple(f"keras: {layout}" for layout in layouts)


# The paper's CIFAR runs: 80 epochs (DenseNet 100) over the training part, the test set each
# epoch: (epochs, training images, test images).
CIFAR_RUN = (80, 45000, 10000)
# small-cnn on Fashion-MNIST (the demo; configs/fashion-mnist/small-cnn_*.yaml hold the same):
# SSALModule arguments.
SMALL_CNN_RECIPE = {
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "warmup_epochs": 1,
    "schedule_interval": "step",
    "channels_last": True,  # measured faster on two CPU cores for this network (benchmarks/)
}

# Names whose network changed when checkpoints reached schema 3 (they now build the authors'
# networks), and the names that build what they built before: checkpoints of schema 2 and
# older load with these.
LEGACY_NAMES = {
    "resnet50": "preact-resnet50",
    "wrn28-10": "wrn-28-10",
    "sewrn16-8": "sewrn-16-8",
    "densenet190-40": "densenet-bc-190-40",
}


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
    paper_classes: int = 100
    description: str = ""
    # whose definition this is: the authors' code, a paper, or ours
    reference: str = ""
    # backbone arguments that apply only when the model has SSAL branches
    ssal_build: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    # the paper's table, millions of parameters: (baseline, with SSAL branches)
    paper_params: tuple[float, float] | None = None
    # the authors' code's exact counts (baseline, with SSAL branches), counted as ``authors_count``
    authors_params: tuple[int, int] | None = None
    authors_count: Literal["keras", "torch"] = "keras"
    # the paper's run, for projections: (epochs, training images, test images)
    paper_run: tuple[int, int, int] | None = None
    # training settings a workflow uses for this model (the demo's, for small-cnn)
    recipe: dict = field(default_factory=dict)
    # builds the backbone with its published weights (``num_classes``, ``in_channels``)
    pretrained_build: Callable[..., nn.Module] | None = None

    def group_sizes(self, num_classes: int) -> tuple[int, ...]:
        """Groups per branch for ``num_classes`` classes: the paper's sizes where they fit,
        else about C/5, C/3 and C/2 (the paper's proportions for CIFAR-100 and ImageNet)."""
        if max(self.paper_groups) < num_classes:
            return tuple(self.paper_groups)
        return tuple(max(2, min(num_classes - 1, round(num_classes / d))) for d in (5, 3, 2))

    def branch_weights(self, num_branches: int, given: Sequence[float] | None = None) -> list:
        """Loss weights of the ``num_branches`` deepest branches (``given`` overrides)."""
        weights = list(given or self.weights)
        return weights[len(weights) - num_branches :] if num_branches else []


_MODELS: dict[str, Callable[[], ModelEntry]] = {}
_FAMILIES: list[tuple[re.Pattern, Callable[[re.Match], ModelEntry], str, bool]] = []
_SHOWN: dict[str, str] = {}


def register_model(name: str) -> Callable[[Callable[[], ModelEntry]], Callable[[], ModelEntry]]:
    """Decorator: register a function returning the ``ModelEntry`` of ``name``."""

    def wrap(fn: Callable[[], ModelEntry]) -> Callable[[], ModelEntry]:
        _MODELS[name] = fn
        return fn

    return wrap


def register_family(
    pattern: str, example: str, listed: bool = True, shown: str | None = None
) -> Callable:
    """Decorator: register a family of models whose names match ``pattern``; ``listed``
    families show their example in ``list_models`` (timm's and torchvision's do not: they
    need other libraries and their own lists); ``shown`` is the pattern for people
    (``wrn-DEPTH-WIDTH``)."""

    def wrap(fn: Callable[[re.Match], ModelEntry]) -> Callable[[re.Match], ModelEntry]:
        _FAMILIES.append((re.compile(pattern + r"\Z"), fn, example, listed))
        _SHOWN[example] = shown or pattern
        return fn

    return wrap


def list_families() -> list[dict[str, str]]:
    """Every family of names: its pattern and an example."""
    return [{"pattern": _SHOWN[ex], "example": ex} for _, _, ex, _ in _FAMILIES]


def list_models(families: bool = True) -> list[str]:
    """Registered names; with ``families``, one example per family too (e.g. ``wrn-16-4``)."""
    names = list(_MODELS)
    if families:
        names += [ex for _, _, ex, listed in _FAMILIES if listed and ex not in names]
    return names


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ``ValueError`` listing the known names otherwise."""
    if not isinstance(name, str):  # a config's `model: null` or a list
        raise ValueError(f"model must be a model name, got {name!r}; see `ssal models`")
    if name in _MODELS:
        return _MODELS[name]()
    for pattern, fn, _, _ in _FAMILIES:
        m = pattern.match(name)
        if m:
            return fn(m)
    known = ", ".join(list_models())
    raise ValueError(f"unknown model {name!r}; known: {known} (families take other numbers)")


def default_groupings(num_classes: int, sizes: Sequence[int]) -> list[Grouping]:
    """Placeholder groupings (class c -> c mod G) used to build and count a model."""
    return [Grouping(np.arange(num_classes) % g, name=f"modulo-{g}") for g in sizes]


def _deepest(items: Sequence[str], k: int) -> list[str]:
    """The last ``k`` of ``items`` (one item stands for all)."""
    items = list(items)
    return items if len(items) == 1 else items[len(items) - k :]


def create_model(
    name: str,
    num_classes: int = 100,
    groupings: Sequence[Grouping | np.ndarray | Sequence[int]] | None = None,
    *,
    in_channels: int | None = None,
    positions: Sequence[str] | None = None,
    layouts: Sequence[str] | None = None,
    bn_momentum: float | None = None,
    pretrained: bool | str | None = None,
    **backbone_kwargs: object,
) -> SSALModel:
    """Build a registered model; ``groupings=None`` gives the plain baseline (no branches).

    One grouping per branch, in the entry's position order; with fewer groupings than
    positions the deepest positions (and layouts) are used. ``positions``/``layouts`` override
    the entry's (module names and layout strings); ``bn_momentum`` sets every batch norm's
    (PyTorch convention: the weight of the new batch statistics). ``backbone_kwargs`` go to the
    backbone's builder, after the entry's ``ssal_build`` when there are groupings.
    ``pretrained``: ``True`` for the backbone's published weights (timm's, torchvision's), or
    the path of a state dict or safetensors file; the branches start fresh either way.
    """
    entry = get_entry(name)
    c_in = in_channels or entry.input_size[0]
    if pretrained is True or (isinstance(pretrained, str) and pretrained.lower() == "true"):
        if entry.pretrained_build is None:
            raise ValueError(
                f"{name} has no published weights; give a file: --model.network.pretrained PATH"
            )
        backbone = entry.pretrained_build(num_classes=num_classes, in_channels=c_in)
    else:
        kwargs = {**(entry.ssal_build if groupings else {}), **backbone_kwargs}
        backbone = entry.build(num_classes=num_classes, in_channels=c_in, **kwargs)
        if pretrained and str(pretrained).lower() != "false":
            load_backbone_weights(backbone, pretrained)
    specs: list[BranchSpec] = []
    if groupings:
        groupings = [as_grouping(g) for g in groupings]
        k = len(groupings)
        pos = list(positions or entry.positions)
        if k > len(pos):
            raise ValueError(f"{k} groupings but {name} has {len(pos)} branch positions")
        pos, lay = pos[len(pos) - k :], _deepest(layouts or entry.layouts, k)
        if len(lay) == 1:
            lay = lay * k
        if len(lay) != k:
            raise ValueError(f"{name}: {len(lay)} layouts for {k} branches; give one per branch")
        for g in groupings:
            if g.num_classes != num_classes:
                raise ValueError(
                    f"grouping {g.name!r} covers {g.num_classes} classes, model has {num_classes}"
                )
        specs = [BranchSpec(p, lay_, g) for p, lay_, g in zip(pos, lay, groupings, strict=True)]
    model = SSALModel(backbone, specs, input_size=(c_in, *entry.input_size[1:]))
    if bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
    model.name = name  # type: ignore[assignment]
    return model


def model_summary(
    name: str, num_classes: int | None = None, groups: Sequence[int] | None = None
) -> dict:
    """Parameter counts of ``name`` as a baseline and with SSAL branches, as PyTorch counts
    them (trainable) and as Keras does (plus batch norm's moving statistics: the paper's
    table's convention), counted on the meta device (nothing is allocated); its positions,
    layouts and the paper's and the authors' numbers. Classes and groups default to the
    paper's setting of the model."""
    import torch

    entry = get_entry(name)
    classes = num_classes or entry.paper_classes
    groups = list(groups or entry.paper_groups)
    with torch.device("meta"):
        base = create_model(name, classes)
        full = create_model(name, classes, default_groupings(classes, groups))
    row = {
        "name": name,
        "description": entry.description,
        "reference": entry.reference,
        "num_classes": classes,
        "groups": groups,
        "input_size": list(entry.input_size),
        "params_baseline": torch_parameter_count(base),
        "params_ssal": torch_parameter_count(full),
        "params_branches": torch_parameter_count(full.branches),
        "params_baseline_keras": keras_parameter_count(base),
        "params_ssal_keras": keras_parameter_count(full),
        "positions": list(entry.positions),
        "paper_positions": [list(p) for p in entry.paper_positions],
        "layouts": list(entry.layouts),
        "branch_weights": list(entry.weights),
        "alpha": entry.alpha,
    }
    if entry.paper_params:
        row["paper_params_baseline"] = int(entry.paper_params[0] * 1e6)
        row["paper_params_ssal"] = int(entry.paper_params[1] * 1e6)
    if entry.authors_params:
        row["authors_params_baseline"], row["authors_params_ssal"] = entry.authors_params
        row["authors_count"] = entry.authors_count
    return row


def _cifar_entry(
    name: str,
    build: Callable[..., nn.Module],
    position: Callable[[int, int], str],
    paper: tuple[tuple[int, int], ...],
    layouts: tuple[str, ...],
    weights: tuple[float, ...],
    alpha: float,
    description: str,
    reference: str,
) -> ModelEntry:
    """A CIFAR model's entry; the authors' networks get their Keras branch layers."""
    authors = reference == AUTHORS_KERAS
    return ModelEntry(
        name=name,
        build=build,
        input_size=(3, 32, 32),
        positions=tuple(position(s, k) for s, k in paper),
        layouts=keras_layouts(layouts) if authors else layouts,
        weights=weights,
        alpha=alpha,
        paper_positions=paper,
        description=description,
        reference=reference,
    )


def _wrn_entry(name: str, depth: int, width: int, se: bool, authors: bool = False) -> ModelEntry:
    half = max(1, (depth - 4) // 12)
    se_kw = {"se_ratio": 16, "se_init": "orthogonal" if authors else "torch"} if se else {}
    se_name, se_text = ("SE-", ", squeeze-excitation ratio 16") if se else ("", "")
    if authors:
        build = partial(WideResNet, depth, width, post_activation=True, style=AUTHORS_WRN, **se_kw)
        description = (
            f"{se_name}WRN-{depth}-{width} as the authors built it (Keras): post-activation "
            f"blocks, max-pool between groups, conv biases, Keras batch norm, glorot_uniform"
            f"{se_text}"
        )
    else:
        build = partial(WideResNet, depth, width, **se_kw)
        description = f"{se_name}WRN-{depth}-{width}, pre-activation{se_text}"
    reference = AUTHORS_KERAS if authors else "Zagoruyko & Komodakis 2016"
    paper = ((2, half), (3, half), (3, -1))
    return _cifar_entry(
        name, build, WideResNet.position, paper, WIDE_LAYOUTS, (0.8, 0.9, 1.0), 0.4,
        description, reference,
    )  # fmt: skip


def _densenet_entry(name: str, depth: int, growth: int, authors: bool = False) -> ModelEntry:
    if authors:
        build = partial(DenseNetBC, depth, growth, dropout=0.2, style=AUTHORS_DENSENET)
        description = (
            f"DenseNet-BC-{depth}, growth {growth}, as the authors built it (Keras): dropout 0.2 "
            "after each 3x3 conv, batch norm eps 1.1e-5, orthogonal convs"
        )
    else:
        build = partial(DenseNetBC, depth, growth)
        description = f"DenseNet-BC-{depth}, growth {growth}, compression 0.5"
    reference = AUTHORS_KERAS if authors else "Huang et al. 2017"
    paper = ((1, -1), (2, 0), (3, 0))
    return _cifar_entry(
        name, build, DenseNetBC.position, paper, WIDE_LAYOUTS, (0.8, 0.9, 1.0), 0.5,
        description, reference,
    )  # fmt: skip


def _resnet50_entry(name: str, authors: bool) -> ModelEntry:
    if authors:
        build = partial(
            PreActResNet,
            (3, 4, 6, 3),
            style=AUTHORS_RESNET,
            strides=(1, 2, 2, 1),  # their builder never halves below 8x8
            stem_activation=True,
            stride_in_1x1=True,
            raw_shortcut=True,
        )
        description = (
            "ResNet-50 for CIFAR as the authors built it (Keras): pre-activation bottlenecks, "
            "conv-BN-ReLU 5x5 stem, last stage at 8x8, conv biases, batch norm momentum 0.35, "
            "he_normal"
        )
    else:
        build = partial(PreActResNet, (3, 4, 6, 3))
        description = "pre-activation ResNet-50 for CIFAR (5x5 stem, no max-pool, 4x4 last stage)"
    reference = AUTHORS_KERAS if authors else "He et al. 2016 (pre-activation)"
    paper = ((1, -1), (2, -1), (3, -1))
    return _cifar_entry(
        name, build, PreActResNet.position, paper, RESNET_LAYOUTS, (0.42, 0.59, 0.76), 0.3,
        description, reference,
    )  # fmt: skip


@register_model("resnet50")
def _resnet50() -> ModelEntry:
    return replace(
        _resnet50_entry("resnet50", authors=True),
        paper_params=(23.8, 28.9),
        authors_params=(23_772_644, 28_886_131),
        paper_run=CIFAR_RUN,
    )


@register_model("preact-resnet50")
def _preact_resnet50() -> ModelEntry:
    return _resnet50_entry("preact-resnet50", authors=False)


@register_model("sewrn16-8")
def _sewrn16_8() -> ModelEntry:
    return replace(
        _wrn_entry("sewrn16-8", 16, 8, se=True, authors=True),
        paper_params=(11.1, 14.9),
        paper_run=CIFAR_RUN,
    )


@register_model("wrn28-10")
def _wrn28_10() -> ModelEntry:
    return replace(
        _wrn_entry("wrn28-10", 28, 10, se=False, authors=True),
        paper_params=(36.6, 38.2),
        authors_params=(36_564_932, 43_248_387),
        paper_run=CIFAR_RUN,
    )


@register_model("densenet190-40")
def _densenet190_40() -> ModelEntry:
    return replace(
        _densenet_entry("densenet190-40", 190, 40, authors=True),
        paper_params=(26.1, 38.3),
        authors_params=(26_078_580, 38_287_795),
        paper_run=(100, *CIFAR_RUN[1:]),
    )


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
        paper_classes=1000,
        description="torchvision ResNet-50 for ImageNet with the authors' Inception branches; "
        "the last batch norm of each block starts at zero only with branches (as theirs)",
        reference="authors' PyTorch code",
        ssal_build={"zero_init_residual": True},
        authors_params=(25_557_032, 37_453_730),
        authors_count="torch",
        paper_run=(90, 1255544, 50000),
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
        paper_classes=10,
        description="6-conv CNN for Fashion-MNIST-sized images (the demo's network)",
        reference="ours",
        paper_run=(3, 54000, 10000),
        recipe=dict(SMALL_CNN_RECIPE),
    )


@register_family(r"wrn-(\d+)-(\d+)", "wrn-28-10", shown="wrn-DEPTH-WIDTH")
def _wrn_family(m: re.Match) -> ModelEntry:
    return _wrn_entry(m.group(0), int(m.group(1)), int(m.group(2)), se=False)


@register_family(r"sewrn-(\d+)-(\d+)", "sewrn-16-8", shown="sewrn-DEPTH-WIDTH")
def _sewrn_family(m: re.Match) -> ModelEntry:
    return _wrn_entry(m.group(0), int(m.group(1)), int(m.group(2)), se=True)


@register_family(r"densenet-bc-(\d+)-(\d+)", "densenet-bc-190-40", shown="densenet-bc-DEPTH-GROWTH")
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
        base = _preact_resnet50()
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
        reference="ours",
    )


for _kind in ("wrn", "densenet", "resnet"):
    register_model(f"tiny-{_kind}")(lambda kind=_kind: _tiny_entry(kind))
