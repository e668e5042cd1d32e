"""``SSALMetrics``: the counts of ``ssal.scores`` as torchmetrics states, summed over batches and
processes, so validation under DDP counts every image once and reports what ``ssal evaluate``
reports."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from ssal.model import group_index_name
from ssal.scores import ALPHA_GRID, batch_counts, count_shapes, figures

__all__ = ["ALPHA_GRID", "SSALMetrics"]


class SSALMetrics(Metric):
    """Counts behind every number the paper reports, summed over batches and processes.

    ``update(logits (N, C), branch_logits [(N, G_i)], target (N,))``; ``compute()`` returns
    ``ssal.scores.figures``' dict.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        group_indices: Sequence[torch.Tensor],
        num_classes: int,
        alpha: float = 0.3,
        alpha_grid: Sequence[float] = ALPHA_GRID,
        confusion: bool = True,
    ) -> None:
        super().__init__()
        self.num_branches = len(group_indices)
        for i, g in enumerate(group_indices):
            self.register_buffer(group_index_name(i), torch.as_tensor(g, dtype=torch.long))
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.alpha_grid = tuple(float(a) for a in alpha_grid)
        self.with_confusion = confusion
        shapes = count_shapes(num_classes, self.num_branches, len(self.alpha_grid), confusion)
        self._keys = list(shapes)
        for key, shape in shapes.items():
            self.add_state(key, torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def group_indices(self) -> list[torch.Tensor]:
        return [getattr(self, group_index_name(i)) for i in range(self.num_branches)]

    def update(
        self, logits: torch.Tensor, branch_logits: Sequence[torch.Tensor], target: torch.Tensor
    ) -> None:
        counts = batch_counts(
            logits,
            branch_logits,
            target,
            self.group_indices,
            self.alpha,
            self.alpha_grid,
            self.with_confusion,
        )
        for key in self._keys:
            setattr(self, key, getattr(self, key) + counts[key])

    def compute(self) -> dict:
        return figures({k: getattr(self, k) for k in self._keys}, self.alpha, self.alpha_grid)
