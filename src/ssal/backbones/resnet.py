"""ResNets: pre-activation bottleneck ResNets for CIFAR and torchvision's for ImageNet.

The CIFAR ResNet comes in two variants of the pre-activation bottleneck (He et al. 2016):

- the usual one: every block starts with BN-ReLU, its shortcut projects the activated input,
  the 3x3 convolution carries the stride, each stage after the first halves the feature map;
- the authors' Keras one (``stem_activation``, ``stride_in_1x1``, ``raw_shortcut``,
  ``strides=(1, 2, 2, 1)``): a conv-BN-ReLU stem whose output the first block takes as it is,
  the first 1x1 convolution carries the stride, the shortcut projects the block's raw input,
  and the last stage stays at 8x8 (their builder never goes below 8 pixels).

Module names of the CIFAR variants, used as branch positions: ``stem`` (5x5 conv, stride 1, no
max-pool), ``layer1``..``layer4`` (stages, blocks ``layerS.K``), ``head``, ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from ssal.backbones.common import STANDARD, PooledClassifier, stage_position
from ssal.conventions import Style
from ssal.errors import UserError


class PreActBottleneck(nn.Module):
    """[BN-ReLU]-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1(4x), plus the (projected) shortcut.

    ``activate_input=False`` leaves out the first BN-ReLU (the input is already activated);
    ``stride_in_1x1`` puts the stride on the first 1x1 convolution instead of the 3x3 one;
    ``raw_shortcut`` projects the block's input rather than its activation.
    """

    expansion = 4

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        style: Style = STANDARD,
        activate_input: bool = True,
        stride_in_1x1: bool = False,
        raw_shortcut: bool = False,
    ) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.bn1 = style.norm(c_in) if activate_input else None
        self.conv1 = style.conv(c_in, planes, 1, stride if stride_in_1x1 else 1)
        self.bn2 = style.norm(planes)
        self.conv2 = style.conv(planes, planes, 3, 1 if stride_in_1x1 else stride)
        self.bn3 = style.norm(planes)
        self.conv3 = style.conv(planes, c_out, 1)
        changes = stride != 1 or c_in != c_out
        self.shortcut = style.conv(c_in, c_out, 1, stride, padding=0) if changes else None
        self.raw_shortcut = raw_shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x if self.bn1 is None else torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(x if self.raw_shortcut else a)
        o = self.conv1(a)
        o = self.conv2(torch.relu(self.bn2(o)))
        o = self.conv3(torch.relu(self.bn3(o)))
        return o + skip


class PreActResNet(PooledClassifier):
    """Pre-activation bottleneck ResNet for small images (ResNet-50: ``blocks=(3, 4, 6, 3)``).

    ``strides``: per stage, the stride of its first block (default 1 then 2s); the other
    switches choose the authors' variant (module docstring), ``style`` makes the layers.
    """

    def __init__(
        self,
        blocks: tuple[int, ...] = (3, 4, 6, 3),
        num_classes: int = 100,
        in_channels: int = 3,
        stem_kernel: int = 5,
        base: int = 64,
        style: Style = STANDARD,
        strides: Sequence[int] | None = None,
        stem_activation: bool = False,
        stride_in_1x1: bool = False,
        raw_shortcut: bool = False,
    ) -> None:
        super().__init__()
        strides = list(strides or [1] + [2] * (len(blocks) - 1))
        if len(strides) != len(blocks):
            raise UserError(f"{len(strides)} strides for {len(blocks)} stages")
        self.stem: nn.Module = style.conv(in_channels, base, stem_kernel)
        if stem_activation:
            self.stem = nn.Sequential(self.stem, style.norm(base), nn.ReLU(inplace=True))
        c = base
        for s, n in enumerate(blocks):
            planes = base * 2**s
            layers = []
            for i in range(n):
                first = i == 0 and s == 0
                layers.append(
                    PreActBottleneck(
                        c,
                        planes,
                        strides[s] if i == 0 else 1,
                        style,
                        activate_input=not (first and stem_activation),
                        stride_in_1x1=stride_in_1x1,
                        raw_shortcut=raw_shortcut,
                    )
                )
                c = planes * PreActBottleneck.expansion
            self.add_module(f"layer{s + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.head = nn.Sequential(style.norm(c), nn.ReLU(inplace=True))
        self.fc = nn.Linear(c, num_classes)
        style.initialize(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.head(x)

    @staticmethod
    def position(stage: int, k: int) -> str:
        """Module name of the paper's position (stage, k): stages are the residual stages."""
        return stage_position(f"layer{stage}", k)


def resnet50_imagenet(
    num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
) -> nn.Module:
    """torchvision's ResNet-50, randomly initialised; ``zero_init_residual`` zeroes the last
    batch norm of each block (the authors' SSAL model does, their baseline does not)."""
    model = torchvision.models.resnet50(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model
