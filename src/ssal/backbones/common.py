"""What the backbones share: the classifier's forward pass and how a paper position ``(stage,
k)`` names a module."""

from __future__ import annotations

import torch
from torch import nn

from ssal.conventions import Style

__all__ = ["STANDARD", "PooledClassifier", "stage_position"]

STANDARD = Style(conv_init="kaiming_fan_out")
"""PyTorch's layers with torchvision's initialisation of convolutions (Kaiming normal, fan-out)."""


class PooledClassifier(nn.Module):
    """A backbone whose logits are ``fc`` of the global average of ``forward_features``."""

    fc: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))


def stage_position(stage: str, k: int, blocks: str = "") -> str:
    """Module name of the position after the first ``k`` blocks of the module ``stage``:
    ``k = -1`` its output, ``k = 0`` its input, otherwise the output of block ``k - 1``
    (named ``{stage}.{blocks}{k - 1}``)."""
    if k == -1:
        return stage
    if k == 0:
        return f"{stage}:input"
    return f"{stage}.{blocks}{k - 1}"
