"""Tiny networks with tiny branches, for tests and smoke runs: WRN-10-1 (``tiny-wrn``),
DenseNet-BC-10-4 (``tiny-densenet``) and a ResNet of three one-block stages
(``tiny-resnet``), each at its big sibling's positions with its weights and alpha."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from ssal.backbones.densenet import DenseNetBC
from ssal.backbones.entry import Branches, ModelEntry, Network, Paper
from ssal.backbones.families.cifar import CIFAR_INPUT
from ssal.backbones.families.densenet import DENSENET_BRANCHES, DENSENET_POSITIONS
from ssal.backbones.families.resnet import RESNET50_BRANCHES, RESNET_POSITIONS
from ssal.backbones.families.wrn import wrn_branches, wrn_positions
from ssal.backbones.registry import register_model
from ssal.backbones.resnet import PreActResNet
from ssal.backbones.wrn import WideResNet

__all__ = ["TINY_LAYOUTS"]

TINY_LAYOUTS = ("cbr(32,3,2) cbr(32,3) gap", "cbr(64,3) gap", "cbr(64,3) gap")


def _tiny(kind: str, build: partial, branches: Branches, positions: tuple) -> ModelEntry:
    return ModelEntry(
        name=f"tiny-{kind}",
        network=Network(build, CIFAR_INPUT),
        branches=replace(branches, layouts=TINY_LAYOUTS),
        paper=Paper(positions, groups=(2, 3, 5)),
        description=f"tiny {kind} for tests",
        reference="ours",
    )


@register_model("tiny-wrn")
def tiny_wrn() -> ModelEntry:
    """WRN-10-1 with tiny branches."""
    return _tiny("wrn", partial(WideResNet, 10, 1), wrn_branches(10), wrn_positions(10))


@register_model("tiny-densenet")
def tiny_densenet() -> ModelEntry:
    """DenseNet-BC-10 with growth 4 and tiny branches."""
    return _tiny("densenet", partial(DenseNetBC, 10, 4), DENSENET_BRANCHES, DENSENET_POSITIONS)


@register_model("tiny-resnet")
def tiny_resnet() -> ModelEntry:
    """A pre-activation ResNet of three one-block stages, 8 channels wide, with tiny branches."""
    build = partial(PreActResNet, (1, 1, 1), base=8, stem_kernel=3)
    return _tiny("resnet", build, RESNET50_BRANCHES, RESNET_POSITIONS)
