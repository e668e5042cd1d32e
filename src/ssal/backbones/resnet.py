"""ResNets: the paper's pre-activation ResNet-50 for CIFAR and torchvision's for ImageNet.

Module names of the CIFAR variant, used as branch positions: ``stem`` (5x5 conv, stride 1, no
max-pool), ``layer1``..``layer4`` (stages, blocks ``layerS.K``), ``head``, ``fc``.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x), projected shortcut."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(torch.relu(self.bn2(o)))
        o = self.conv3(torch.relu(self.bn3(o)))
        return o + skip


class PreActResNet(nn.Module):
    """Pre-activation bottleneck ResNet for small images (ResNet-50: ``blocks=(3, 4, 6, 3)``)."""

    def __init__(
        self,
        blocks: tuple[int, ...] = (3, 4, 6, 3),
        num_classes: int = 100,
        in_channels: int = 3,
        stem_kernel: int = 5,
        base: int = 64,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, base, stem_kernel, 1, stem_kernel // 2, bias=False)
        c = base
        for s, n in enumerate(blocks):
            planes = base * 2**s
            layers = []
            for i in range(n):
                layers.append(PreActBottleneck(c, planes, 2 if (i == 0 and s > 0) else 1))
                c = planes * PreActBottleneck.expansion
            self.add_module(f"layer{s + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))

    @staticmethod
    def position(stage: int, k: int) -> str:
        """Module name of the paper's position (stage, k): stages are the residual stages."""
        layer = f"layer{stage}"
        if k == -1:
            return layer
        if k == 0:
            return f"{layer}:input"
        return f"{layer}.{k - 1}"


def resnet50_imagenet(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-50 (random init, zero-init last BN of each block, as the authors)."""
    model = torchvision.models.resnet50(
        weights=None, num_classes=num_classes, zero_init_residual=True
    )
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model
