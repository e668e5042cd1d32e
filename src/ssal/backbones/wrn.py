"""Wide residual networks (Zagoruyko & Komodakis), pre-activation, optional squeeze-excitation.

Module names, used as branch positions: ``stem`` (the paper's stage 1), ``group1``..``group3``
(stages 2 to 4, blocks ``groupS.K``), ``head`` (final batch norm + ReLU), ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn


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
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 (+SE), plus the (projected) shortcut."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, dropout: float = 0.0, se_ratio: int = 0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.se = SqueezeExcitation(c_out, se_ratio) if se_ratio else nn.Identity()
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(torch.relu(self.bn2(o))))
        return self.se(o) + skip


class WideResNet(nn.Module):
    """WRN-depth-width for small images; depth = 6n + 4 with n blocks per group."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 100,
        in_channels: int = 3,
        dropout: float = 0.0,
        se_ratio: int = 0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.blocks_per_group = n
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        groups = []
        for g in range(3):
            c_in, c_out, stride = widths[g], widths[g + 1], 1 if g == 0 else 2
            groups.append(
                nn.Sequential(
                    *(
                        WideBlock(
                            c_in if i == 0 else c_out,
                            c_out,
                            stride if i == 0 else 1,
                            dropout,
                            se_ratio,
                        )
                        for i in range(n)
                    )
                )
            )
        self.group1, self.group2, self.group3 = groups
        self.head = nn.Sequential(nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.group3(self.group2(self.group1(x)))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))

    @staticmethod
    def position(stage: int, k: int) -> str:
        """Module name of the paper's position (stage, k): stage 1 is the stem."""
        if stage == 1:
            return "stem"
        group = f"group{stage - 1}"
        if k == -1:
            return group
        if k == 0:
            return f"{group}:input"
        return f"{group}.{k - 1}"
