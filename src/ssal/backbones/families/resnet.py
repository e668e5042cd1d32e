"""ResNet-50 for CIFAR: the authors' network (``resnet50``, their Keras code) and the standard
pre-activation one (``preact-resnet50``), with the paper's branches."""

from __future__ import annotations

from functools import partial

from ssal.backbones.entry import Branches, ModelEntry, Network, Paper
from ssal.backbones.families.cifar import (
    AUTHORS_KERAS,
    CIFAR_INPUT,
    CIFAR_RUN,
    keras_branches,
    module_positions,
)
from ssal.backbones.registry import register_model
from ssal.backbones.resnet import PreActResNet
from ssal.conventions import Norm, Style

__all__ = ["AUTHORS_RESNET", "RESNET50_BRANCHES", "RESNET_POSITIONS"]

# The layers of the authors' Keras ResNet-50 (keras/resnet_aux_tf.py and keras/train.py of
# their repository).
AUTHORS_RESNET = Style(
    norm=Norm(eps=1e-3, momentum=0.35),  # BatchNormalization(momentum=0.65)
    conv_bias=True,
    same="tf",
    conv_init="he_normal",
    linear_init="he_normal",
)
RESNET_POSITIONS = ((1, -1), (2, -1), (3, -1))  # the paper's: after stages 1, 2 and 3
RESNET50_BRANCHES = Branches(
    positions=module_positions(PreActResNet.position, RESNET_POSITIONS),
    layouts=(
        "cbr(128,5,2) cbr(128,3) inception gap",
        "cbr(128,5) cbr(128,3) inception gap",
        "cbr(128,3) cbr(128,3) inception gap",
    ),
    weights=(0.42, 0.59, 0.76),
    alpha=0.3,
)


@register_model("resnet50")
def resnet50() -> ModelEntry:
    """The authors' ResNet-50 for CIFAR."""
    build = partial(
        PreActResNet,
        (3, 4, 6, 3),
        style=AUTHORS_RESNET,
        strides=(1, 2, 2, 1),  # their builder never halves below 8x8
        stem_activation=True,
        stride_in_1x1=True,
        raw_shortcut=True,
    )
    return ModelEntry(
        name="resnet50",
        network=Network(build, CIFAR_INPUT),
        branches=keras_branches(RESNET50_BRANCHES),
        paper=Paper(
            RESNET_POSITIONS,
            params=(23.8, 28.9),
            authors_params=(23_772_644, 28_886_131),
            run=CIFAR_RUN,
        ),
        description="ResNet-50 for CIFAR as the authors built it (Keras): pre-activation "
        "bottlenecks, conv-BN-ReLU 5x5 stem, last stage at 8x8, conv biases, batch norm "
        "momentum 0.35, he_normal",
        reference=AUTHORS_KERAS,
    )


@register_model("preact-resnet50")
def preact_resnet50() -> ModelEntry:
    """The standard pre-activation ResNet-50 for CIFAR."""
    return ModelEntry(
        name="preact-resnet50",
        network=Network(partial(PreActResNet, (3, 4, 6, 3)), CIFAR_INPUT),
        branches=RESNET50_BRANCHES,
        paper=Paper(RESNET_POSITIONS),
        description="pre-activation ResNet-50 for CIFAR (5x5 stem, no max-pool, 4x4 last stage)",
        reference="He et al. 2016 (pre-activation)",
    )
