"""Wide ResNets: the authors' WRN-28-10 and SE-WRN-16-8 (their Keras code) and the standard
families ``wrn-D-W`` and ``sewrn-D-W`` (Zagoruyko & Komodakis), with the paper's branches."""

from __future__ import annotations

import re
from functools import partial

from ssal.backbones.entry import Branches, ModelEntry, Network, Paper
from ssal.backbones.families.cifar import (
    AUTHORS_KERAS,
    CIFAR_INPUT,
    CIFAR_RUN,
    WIDE_LAYOUTS,
    keras_branches,
    module_positions,
)
from ssal.backbones.registry import register_family, register_model
from ssal.backbones.wrn import WideResNet
from ssal.conventions import KERAS_NORM, Style

__all__ = ["AUTHORS_WRN", "wrn_branches", "wrn_positions"]

# The layers of the authors' Keras WRN (keras/wrn_aux_tf.py and keras/train.py).
AUTHORS_WRN = Style(
    norm=KERAS_NORM,
    conv_bias=True,
    same="tf",
    conv_init="glorot_uniform",
    linear_init="glorot_uniform",
)
AUTHORS_SE = {"se_ratio": 16, "se_init": "orthogonal"}
STANDARD_SE = {"se_ratio": 16, "se_init": "torch"}
AUTHORS_TEXT = (
    "as the authors built it (Keras): post-activation blocks, max-pool between groups, conv "
    "biases, Keras batch norm, glorot_uniform"
)
STANDARD = "Zagoruyko & Komodakis 2016"


def wrn_positions(depth: int) -> tuple[tuple[int, int], ...]:
    """The paper's positions in a WRN of ``depth``: after half of group 2 and of group 3, and
    after group 3."""
    half = max(1, (depth - 4) // 12)
    return ((2, half), (3, half), (3, -1))


def wrn_branches(depth: int) -> Branches:
    """The paper's branches on a WRN (or SE-WRN) of ``depth``."""
    return Branches(
        positions=module_positions(WideResNet.position, wrn_positions(depth)),
        layouts=WIDE_LAYOUTS,
        weights=(0.8, 0.9, 1.0),
        alpha=0.4,
    )


@register_model("sewrn16-8")
def sewrn16_8() -> ModelEntry:
    """The authors' SE-WRN-16-8."""
    build = partial(WideResNet, 16, 8, post_activation=True, style=AUTHORS_WRN, **AUTHORS_SE)
    return ModelEntry(
        name="sewrn16-8",
        network=Network(build, CIFAR_INPUT),
        branches=keras_branches(wrn_branches(16)),
        paper=Paper(wrn_positions(16), params=(11.1, 14.9), run=CIFAR_RUN),
        description=f"SE-WRN-16-8 {AUTHORS_TEXT}, squeeze-excitation ratio 16",
        reference=AUTHORS_KERAS,
    )


@register_model("wrn28-10")
def wrn28_10() -> ModelEntry:
    """The authors' WRN-28-10."""
    build = partial(WideResNet, 28, 10, post_activation=True, style=AUTHORS_WRN)
    return ModelEntry(
        name="wrn28-10",
        network=Network(build, CIFAR_INPUT),
        branches=keras_branches(wrn_branches(28)),
        paper=Paper(
            wrn_positions(28),
            params=(36.6, 38.2),
            authors_params=(36_564_932, 43_248_387),
            run=CIFAR_RUN,
        ),
        description=f"WRN-28-10 {AUTHORS_TEXT}",
        reference=AUTHORS_KERAS,
    )


def _standard_entry(m: re.Match, se: bool) -> ModelEntry:
    """WRN-DEPTH-WIDTH or, with ``se``, SE-WRN-DEPTH-WIDTH: pre-activation, the paper's branches."""
    depth, width = int(m.group(1)), int(m.group(2))
    kind = "SE-WRN" if se else "WRN"
    extra = ", squeeze-excitation ratio 16" if se else ""
    return ModelEntry(
        name=m.group(0),
        network=Network(
            partial(WideResNet, depth, width, **(STANDARD_SE if se else {})), CIFAR_INPUT
        ),
        branches=wrn_branches(depth),
        paper=Paper(wrn_positions(depth)),
        description=f"{kind}-{depth}-{width}, pre-activation{extra}",
        reference=STANDARD,
    )


@register_family(r"wrn-(\d+)-(\d+)", "wrn-28-10", shown="wrn-DEPTH-WIDTH")
def wrn_family(m: re.Match) -> ModelEntry:
    """WRN-DEPTH-WIDTH, pre-activation."""
    return _standard_entry(m, se=False)


@register_family(r"sewrn-(\d+)-(\d+)", "sewrn-16-8", shown="sewrn-DEPTH-WIDTH")
def sewrn_family(m: re.Match) -> ModelEntry:
    """SE-WRN-DEPTH-WIDTH, pre-activation, squeeze-excitation ratio 16."""
    return _standard_entry(m, se=True)
