"""Wide residual networks, optionally with squeeze-excitation, in two block orders.

- Pre-activation (Zagoruyko & Komodakis): BN-ReLU-conv3x3-BN-ReLU-conv3x3, the first block of
  groups 2 and 3 downsamples with stride 2, a final BN-ReLU before pooling.
- Post-activation (``post_activation=True``, the authors' Keras WRN): conv3x3-BN-ReLU twice, then
  the add; a 1x1 convolution on the shortcut where the width changes; a conv-BN-ReLU stem;
  2x2 max-pooling (``pool1``, ``pool2``) between the groups; no final BN.

Module names, used as branch positions: ``stem`` (the paper's stage 1), ``group1``..``group3``
(stages 2 to 4, blocks ``groupS.K``), ``head``, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from ssal.backbones.common import STANDARD, PooledClassifier, stage_position
from ssal.conventions import Style, initialize
from ssal.errors import UserError


class SqueezeExcitation(nn.Module):
    """Channel gating: global pool, bottleneck of ``channels // ratio``, sigmoid scale."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class WideBlock(nn.Module):
    """Two 3x3 convolutions (+ dropout between, + SE after) and the (projected) shortcut, with
    BN-ReLU before each convolution or, ``post_activation``, after it."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        dropout: float = 0.0,
        se_ratio: int = 0,
        style: Style = STANDARD,
        post_activation: bool = False,
    ) -> None:
        super().__init__()
        self.post_activation = post_activation
        self.bn1 = style.norm(c_out if post_activation else c_in)
        self.conv1 = style.conv(c_in, c_out, 3, stride)
        self.bn2 = style.norm(c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = style.conv(c_out, c_out, 3)
        self.se = SqueezeExcitation(c_out, se_ratio) if se_ratio else nn.Identity()
        changes = stride != 1 or c_in != c_out
        self.shortcut = style.conv(c_in, c_out, 1, stride) if changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_activation:
            skip = x if self.shortcut is None else self.shortcut(x)
            o = torch.relu(self.bn1(self.conv1(x)))
            o = torch.relu(self.bn2(self.conv2(self.dropout(o))))
        else:
            a = torch.relu(self.bn1(x))
            skip = x if self.shortcut is None else self.shortcut(a)
            o = self.conv2(self.dropout(torch.relu(self.bn2(self.conv1(a)))))
        return self.se(o) + skip


class WideResNet(PooledClassifier):
    """WRN-depth-width for small images; depth = 6n + 4 with n blocks per group.

    ``style`` makes the layers (``ssal.conventions.Style``); ``se_init`` initialises the
    squeeze-excitation layers (the authors': ``orthogonal``).
    """

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 100,
        in_channels: int = 3,
        dropout: float = 0.0,
        se_ratio: int = 0,
        post_activation: bool = False,
        style: Style = STANDARD,
        se_init: str = "torch",
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise UserError(f"WRN depth must be 6n + 4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.blocks_per_group = n
        self.stem: nn.Module = style.conv(in_channels, widths[0], 3)
        if post_activation:
            self.stem = nn.Sequential(self.stem, style.norm(widths[0]), nn.ReLU(inplace=True))
        for g in range(3):
            c_in, c_out = widths[g], widths[g + 1]
            stride = 1 if g == 0 or post_activation else 2
            blocks = [
                WideBlock(
                    c_in if i == 0 else c_out,
                    c_out,
                    stride if i == 0 else 1,
                    dropout,
                    se_ratio,
                    style,
                    post_activation,
                )
                for i in range(n)
            ]
            self.add_module(f"group{g + 1}", nn.Sequential(*blocks))
            if post_activation and g < 2:
                self.add_module(f"pool{g + 1}", nn.MaxPool2d(2))
        self.head = (
            nn.Identity()
            if post_activation
            else nn.Sequential(style.norm(widths[3]), nn.ReLU(inplace=True))
        )
        self.fc = nn.Linear(widths[3], num_classes)
        style.initialize(self)
        for m in self.modules():
            if isinstance(m, SqueezeExcitation):
                initialize(m, linear=se_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for g in (1, 2, 3):
            x = getattr(self, f"group{g}")(x)
            if hasattr(self, f"pool{g}"):
                x = getattr(self, f"pool{g}")(x)
        return self.head(x)

    @staticmethod
    def position(stage: int, k: int) -> str:
        """Module name of the paper's position (stage, k): stage 1 is the stem."""
        return "stem" if stage == 1 else stage_position(f"group{stage - 1}", k)
