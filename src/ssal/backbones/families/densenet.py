"""DenseNet-BC: the authors' DenseNet-BC-190-40 (their Keras code) and the standard family
``densenet-bc-D-K`` (Huang et al.), with the paper's branches."""

from __future__ import annotations

import re
from functools import partial

from ssal.backbones.densenet import DenseNetBC
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
from ssal.conventions import Norm, Style

__all__ = ["AUTHORS_DENSENET", "DENSENET_BRANCHES", "DENSENET_POSITIONS"]

# The layers of the authors' Keras DenseNet (keras/densenet_aux_tf.py and keras/train.py).
AUTHORS_DENSENET = Style(
    norm=Norm(eps=1.1e-5, momentum=0.01),
    same="tf",
    conv_init="orthogonal",
    linear_init="glorot_uniform",
)
# the paper's: after dense block 1, at the inputs of blocks 2 and 3 (after the transitions)
DENSENET_POSITIONS = ((1, -1), (2, 0), (3, 0))
DENSENET_BRANCHES = Branches(
    positions=module_positions(DenseNetBC.position, DENSENET_POSITIONS),
    layouts=WIDE_LAYOUTS,
    weights=(0.8, 0.9, 1.0),
    alpha=0.5,
)


@register_model("densenet190-40")
def densenet190_40() -> ModelEntry:
    """The authors' DenseNet-BC-190 with growth 40."""
    return ModelEntry(
        name="densenet190-40",
        network=Network(
            partial(DenseNetBC, 190, 40, dropout=0.2, style=AUTHORS_DENSENET), CIFAR_INPUT
        ),
        branches=keras_branches(DENSENET_BRANCHES),
        paper=Paper(
            DENSENET_POSITIONS,
            params=(26.1, 38.3),
            authors_params=(26_078_580, 38_287_795),
            run=(100, *CIFAR_RUN[1:]),
        ),
        description="DenseNet-BC-190, growth 40, as the authors built it (Keras): dropout 0.2 "
        "after each 3x3 conv, batch norm eps 1.1e-5, orthogonal convs",
        reference=AUTHORS_KERAS,
    )


@register_family(r"densenet-bc-(\d+)-(\d+)", "densenet-bc-190-40", shown="densenet-bc-DEPTH-GROWTH")
def densenet_family(m: re.Match) -> ModelEntry:
    """DenseNet-BC-DEPTH with growth GROWTH, compression 0.5."""
    depth, growth = int(m.group(1)), int(m.group(2))
    return ModelEntry(
        name=m.group(0),
        network=Network(partial(DenseNetBC, depth, growth), CIFAR_INPUT),
        branches=DENSENET_BRANCHES,
        paper=Paper(DENSENET_POSITIONS),
        description=f"DenseNet-BC-{depth}, growth {growth}, compression 0.5",
        reference="Huang et al. 2017",
    )
