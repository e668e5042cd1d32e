"""ResNet-50 for ImageNet with the authors' branches (their PyTorch code)."""

from __future__ import annotations

from dataclasses import replace

from ssal.backbones.entry import Branches, ModelEntry, Network, Paper
from ssal.backbones.registry import register_model
from ssal.backbones.resnet import resnet50_imagenet as build_resnet50_imagenet

__all__ = ["IMAGENET_BRANCHES", "IMAGENET_INPUT", "IMAGENET_LAYOUTS", "IMAGENET_PAPER"]

IMAGENET_INPUT = (3, 224, 224)
# The authors' ImageNet branches: reduced Inception-v3 C, D, E blocks (pytorch/aux_nets.py);
# branch 1 first halves its 56x56 input with an unpadded 3x3 convolution.
IMAGENET_LAYOUTS = (
    "inception-v3: cbr(256,3,2,0) inception_c inception_d inception_e inception_d inception_e(2)"
    " gap",
    "inception-v3: inception_c inception_d inception_e inception_d inception_e(2) gap",
    "inception-v3: inception_c inception_d inception_e(2) gap",
)
IMAGENET_BRANCHES = Branches(
    positions=("layer1", "layer2", "layer3"),
    layouts=IMAGENET_LAYOUTS,
    weights=(1.0, 1.0, 1.0),
    alpha=0.3,
)
# after stages 1, 2 and 3; 200, 334 and 500 groups of the 1000 classes
IMAGENET_PAPER = Paper(((1, -1), (2, -1), (3, -1)), groups=(200, 334, 500), classes=1000)


@register_model("resnet50-imagenet")
def resnet50_imagenet() -> ModelEntry:
    """torchvision's ResNet-50 with the authors' Inception branches."""
    return ModelEntry(
        name="resnet50-imagenet",
        network=Network(
            build_resnet50_imagenet, IMAGENET_INPUT, ssal_build={"zero_init_residual": True}
        ),
        branches=IMAGENET_BRANCHES,
        paper=replace(
            IMAGENET_PAPER,
            authors_params=(25_557_032, 37_453_730),
            authors_count="torch",
            run=(90, 1255544, 50000),
        ),
        description="torchvision ResNet-50 for ImageNet with the authors' Inception branches; "
        "the last batch norm of each block starts at zero only with branches (as theirs)",
        reference="authors' PyTorch code",
    )
