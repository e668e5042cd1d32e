"""DenseNet-BC (Huang et al.) for small images: bottleneck layers, compression 0.5.

``dropout`` adds dropout after each layer's 3x3 convolution (Keras' DenseNet does, with 0.2 by
default, and so did the authors' runs); ``style`` makes the layers.

Module names, used as branch positions: ``stem``, ``block1``..``block3`` (dense blocks, layers
``blockS.layers.K``), ``trans1``, ``trans2`` (transitions), ``head``, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from ssal.backbones.common import STANDARD, PooledClassifier, stage_position
from ssal.conventions import Style
from ssal.errors import UserError


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k)[-dropout]: ``growth`` new channels from all
    before."""

    def __init__(
        self,
        c_in: int,
        growth: int,
        bottleneck: int = 4,
        dropout: float = 0.0,
        style: Style = STANDARD,
    ) -> None:
        super().__init__()
        self.bn1 = style.norm(c_in)
        self.conv1 = style.conv(c_in, bottleneck * growth, 1)
        self.bn2 = style.norm(bottleneck * growth)
        self.conv2 = style.conv(bottleneck * growth, growth, 3)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.conv1(torch.relu(self.bn1(x)))
        return self.dropout(self.conv2(torch.relu(self.bn2(o))))


class DenseBlock(nn.Module):
    """Layers that each see the concatenation of the block input and all earlier outputs."""

    def __init__(
        self,
        c_in: int,
        num_layers: int,
        growth: int,
        dropout: float = 0.0,
        style: Style = STANDARD,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(c_in + i * growth, growth, dropout=dropout, style=style)
            for i in range(num_layers)
        )
        self.out_channels = c_in + num_layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (compression) then 2x2 average pool."""

    def __init__(self, c_in: int, c_out: int, style: Style = STANDARD) -> None:
        super().__init__(
            style.norm(c_in),
            nn.ReLU(inplace=True),
            style.conv(c_in, c_out, 1),
            nn.AvgPool2d(2),
        )


class DenseNetBC(PooledClassifier):
    """DenseNet-BC-depth-growth: three dense blocks of (depth - 4) / 6 bottleneck layers."""

    def __init__(
        self,
        depth: int = 190,
        growth: int = 40,
        num_classes: int = 100,
        in_channels: int = 3,
        compression: float = 0.5,
        dropout: float = 0.0,
        style: Style = STANDARD,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise UserError(f"DenseNet-BC depth must be 6n + 4 (10, 16, ..., 190), got {depth}")
        n = (depth - 4) // 6
        c = 2 * growth
        self.stem = style.conv(in_channels, c, 3)
        for b in (1, 2, 3):
            block = DenseBlock(c, n, growth, dropout, style)
            self.add_module(f"block{b}", block)
            c = block.out_channels
            if b < 3:
                self.add_module(f"trans{b}", Transition(c, int(c * compression), style))
                c = int(c * compression)
        self.head = nn.Sequential(style.norm(c), nn.ReLU(inplace=True))
        self.fc = nn.Linear(c, num_classes)
        style.initialize(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.block1(self.stem(x)))
        x = self.block3(self.trans2(self.block2(x)))
        return self.head(x)

    @staticmethod
    def position(stage: int, k: int) -> str:
        """Module name of the paper's position (stage, k): stages are the dense blocks."""
        return stage_position(f"block{stage}", k, "layers.")
