"""DenseNet-BC (Huang et al.) for small images: bottleneck layers, compression 0.5.

Module names, used as branch positions: ``stem``, ``block1``..``block3`` (dense blocks, layers
``blockS.K``), ``trans1``, ``trans2`` (transitions), ``head``, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k): ``growth`` new channels from all before."""

    def __init__(self, c_in: int, growth: int, bottleneck: int = 4) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, bottleneck * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))


class DenseBlock(nn.Module):
    """Layers that each see the concatenation of the block input and all earlier outputs."""

    def __init__(self, c_in: int, num_layers: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(c_in + i * growth, growth) for i in range(num_layers)
        )
        self.out_channels = c_in + num_layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (compression) then 2x2 average pool."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.AvgPool2d(2),
        )


class DenseNetBC(nn.Module):
    """DenseNet-BC-depth-growth: three dense blocks of (depth - 4) / 6 bottleneck layers."""

    def __init__(
        self,
        depth: int = 190,
        growth: int = 40,
        num_classes: int = 100,
        in_channels: int = 3,
        compression: float = 0.5,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4 (10, 16, ..., 190), got {depth}")
        n = (depth - 4) // 6
        c = 2 * growth
        self.stem = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)
        self.block1 = DenseBlock(c, n, growth)
        c = self.block1.out_channels
        self.trans1 = Transition(c, int(c * compression))
        c = int(c * compression)
        self.block2 = DenseBlock(c, n, growth)
        c = self.block2.out_channels
        self.trans2 = Transition(c, int(c * compression))
        c = int(c * compression)
        self.block3 = DenseBlock(c, n, growth)
        c = self.block3.out_channels
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.block1(self.stem(x)))
        x = self.block3(self.trans2(self.block2(x)))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))

    @staticmethod
    def position(stage: int, k: int) -> str:
        """Module name of the paper's position (stage, k): stages are the dense blocks."""
        block = f"block{stage}"
        if k == -1:
            return block
        if k == 0:
            return f"{block}:input"
        return f"{block}.layers.{k - 1}"
