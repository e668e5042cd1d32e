"""SSALLoss: fine cross-entropy plus weighted cross-entropy of each branch on its groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssal.errors import UserError
from ssal.grouping import Grouping, as_grouping
from ssal.model import SSALOutput, group_index_name

__all__ = ["LossParts", "SSALLoss", "smoothing_for"]

Convention = Literal["torch", "paper"]


class LossParts(NamedTuple):
    """The total loss, the fine term and each branch's (unweighted) term, all scalars."""

    total: torch.Tensor
    fine: torch.Tensor
    branches: tuple[torch.Tensor, ...]


def smoothing_for(epsilon: float, num_classes: int, convention: Convention) -> float:
    """PyTorch ``label_smoothing`` value giving ``epsilon`` under ``convention``.

    ``"torch"``: true class ``1 - e + e/k``, others ``e/k`` (PyTorch's own).
    ``"paper"``: true class ``1 - e``, others ``e/(k-1)``, i.e. PyTorch's with ``e*k/(k-1)``.
    """
    if not 0.0 <= epsilon < 1.0:
        raise UserError(f"label smoothing must be in [0, 1), got {epsilon}")
    if convention == "torch" or epsilon == 0.0:
        return epsilon
    if convention != "paper":
        raise UserError(
            f"label smoothing convention must be 'torch' or 'paper', got {convention!r}"
        )
    if num_classes < 2:
        raise UserError("label smoothing needs at least 2 classes")
    return min(1.0, epsilon * num_classes / (num_classes - 1))


class SSALLoss(nn.Module):
    """``L = CE(fine, y) + sum_i w_i * CE(branch_i, g_i[y])``.

    ``groupings`` give each branch's class-to-group map; the maps live in buffers, so the
    loss moves with ``.to(device)``. Call as ``loss(output, target)`` with an ``SSALOutput``
    (or a plain ``(N, C)`` logits tensor for a baseline) and ``(N,)`` class indices.
    """

    def __init__(
        self,
        groupings: Sequence[Grouping | np.ndarray | Sequence[int]] = (),
        weights: Sequence[float] | float = 1.0,
        label_smoothing: float = 0.0,
        convention: Convention = "torch",
    ) -> None:
        super().__init__()
        groupings = [as_grouping(g) for g in groupings]
        if isinstance(weights, (int, float)):
            weights = [float(weights)] * len(groupings)
        if len(weights) != len(groupings):
            raise UserError(f"{len(weights)} branch weights for {len(groupings)} groupings")
        self.weights = [float(w) for w in weights]
        self.label_smoothing = label_smoothing
        self.convention = convention
        smoothing_for(label_smoothing, 2, convention)  # validate early
        self.num_groups = [g.num_groups for g in groupings]
        for i, g in enumerate(groupings):
            index = torch.as_tensor(g.assignment)
            self.register_buffer(group_index_name(i), index, persistent=False)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        eps = smoothing_for(self.label_smoothing, logits.shape[-1], self.convention)
        return F.cross_entropy(logits.float(), target, label_smoothing=eps)

    def forward(self, output: SSALOutput | torch.Tensor, target: torch.Tensor) -> LossParts:
        logits, branch_logits = (output, ()) if isinstance(output, torch.Tensor) else output
        if len(branch_logits) != len(self.weights):
            raise UserError(
                f"model has {len(branch_logits)} branches, loss has {len(self.weights)} groupings"
            )
        fine = self._ce(logits, target)
        parts = tuple(
            self._ce(b, getattr(self, group_index_name(i))[target])
            for i, b in enumerate(branch_logits)
        )
        total = fine
        for w, p in zip(self.weights, parts, strict=True):
            total = total + w * p
        return LossParts(total, fine, parts)
