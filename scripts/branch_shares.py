"""Branches' share of parameters and forward FLOPs for each family of the README's table.

Run: ``python scripts/branch_shares.py`` (random weights, 1000 classes, the paper's ImageNet
group sizes 200/334/500, one 224 x 224 image; FLOPs by ``torch.utils.flop_counter``).
"""

from __future__ import annotations

import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

import ssal
from ssal.backbones.external import RESNET50_WIDTHS, scale_layout
from ssal.backbones.factory import default_groupings
from ssal.backbones.families.imagenet import IMAGENET_LAYOUTS
from ssal.backbones.transformers import TOKEN_LAYOUT

FAMILIES = [
    "timm/vit_small_patch16_224",
    "timm/vit_tiny_patch16_224",
    "timm/deit_tiny_distilled_patch16_224",
    "timm/vit_pwee_patch16_reg1_gap_256",
    "timm/eva02_tiny_patch14_224",
    "timm/swin_tiny_patch4_window7_224",
    "timm/convnext_atto",
    "timm/maxvit_pico_rw_256",
    "timm/efficientnet_b0",
    "timm/mobilenetv3_small_050",
    "timm/regnetx_002",
    "timm/mambaout_femto",
    "torchvision/vit_b_16",
    "torchvision/swin_t",
]


def shares(name: str, layouts: list[str] | None = None) -> tuple[float, float]:
    """Branches' percent of all parameters and of one image's forward FLOPs."""
    groupings = default_groupings(1000, (200, 334, 500))
    with_b = ssal.create_model(name, 1000, groupings, layouts=layouts).eval()
    params = with_b.num_parameters()
    x = torch.zeros(1, *with_b.input_size)
    flops = []
    for model in (with_b.backbone, with_b):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        flops.append(counter.get_total_flops())
    return 100 * params["branches"] / params["total"], 100 * (1 - flops[0] / flops[1])


def main(names: list[str]) -> None:
    print("| model | input | default positions | branch params % | branch FLOPs % |")
    print("|---|---|---|---|---|")
    for name in names:
        entry = ssal.get_entry(name)
        p, f = shares(name)
        size = "x".join(map(str, entry.network.input_size[1:]))
        print(
            f"| `{name}` | {size} | {', '.join(f'`{x}`' for x in entry.branches.positions)} "
            f"| {p:.1f} | {f:.1f} |"
        )
    vit = "timm/vit_small_patch16_224"
    # the CNN rule: ResNet-50's ImageNet branches, widths scaled by 384 over ResNet-50's
    conv = [
        scale_layout(lay, 384 / ref)
        for lay, ref in zip(IMAGENET_LAYOUTS, RESNET50_WIDTHS, strict=True)
    ]
    for label, layouts in (
        (TOKEN_LAYOUT, None),
        ("ln attnpool", ["ln attnpool"] * 3),
        ("ln gap", ["ln gap"] * 3),
        # the first two reduce 56 and 28 px maps twice: a 14 x 14 grid runs out of pixels
        (
            "the third ImageNet conv layout (14 x 14 maps) scaled to 384, at all three",
            [conv[2]] * 3,
        ),
    ):
        p, f = shares(vit, layouts)
        print(f"ViT-S/16 {label}: {p:.1f}% params, {f:.1f}% FLOPs")


if __name__ == "__main__":
    main(sys.argv[1:] or FAMILIES)
