"""Streaming evaluation metrics for SSAL models, reducible across processes (torchmetrics).

``SSALMetrics`` accumulates, batch by batch and without holding logits: fine accuracy (+TR),
joint accuracy (+JP) at one alpha and at a grid of alphas, each branch's coarse accuracy, the
paper's consistency analysis, and the confusion matrix of the fine head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from ssal.predict import branch_log_probs, structured_predict

__all__ = ["SSALMetrics", "ALPHA_GRID"]

ALPHA_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0.0, 0.05, ..., 1.0


class SSALMetrics(Metric):
    """Counts behind every number the paper reports, summed over batches and processes.

    ``update(logits (N, C), branch_logits [(N, G_i)], target (N,))``; ``compute()`` returns a
    dict of floats and lists (see ``summary``).
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
            self.register_buffer(f"group_index_{i}", torch.as_tensor(g, dtype=torch.long))
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.alpha_grid = tuple(float(a) for a in alpha_grid)
        self.with_confusion = confusion
        b = self.num_branches
        zeros = lambda *s: torch.zeros(*s, dtype=torch.long)  # noqa: E731
        self.add_state("n", zeros(()), dist_reduce_fx="sum")
        self.add_state("fine_correct", zeros(()), dist_reduce_fx="sum")
        self.add_state("joint_correct", zeros(()), dist_reduce_fx="sum")
        self.add_state("grid_correct", zeros(len(self.alpha_grid)), dist_reduce_fx="sum")
        self.add_state("branch_correct", zeros(b), dist_reduce_fx="sum")
        self.add_state("kept", zeros(()), dist_reduce_fx="sum")
        self.add_state("kept_correct", zeros(()), dist_reduce_fx="sum")
        self.add_state("aside_fine_correct", zeros(()), dist_reduce_fx="sum")
        self.add_state("aside_joint_correct", zeros(()), dist_reduce_fx="sum")
        self.add_state("aside_branch_correct", zeros(b), dist_reduce_fx="sum")
        if confusion:
            self.add_state("confusion", zeros(num_classes, num_classes), dist_reduce_fx="sum")

    @property
    def group_indices(self) -> list[torch.Tensor]:
        return [getattr(self, f"group_index_{i}") for i in range(self.num_branches)]

    def update(
        self, logits: torch.Tensor, branch_logits: Sequence[torch.Tensor], target: torch.Tensor
    ) -> None:
        groups = self.group_indices
        s = structured_predict(logits, branch_logits, groups, self.alpha)
        fine_ok = s.fine_class == target
        self.n += target.numel()
        self.fine_correct += fine_ok.sum()
        self.joint_correct += (s.joint_class == target).sum()
        if self.num_branches:
            coarse = torch.stack([g[target] for g in groups], 1)
            branch_ok = s.branch_group == coarse
            self.branch_correct += branch_ok.sum(0)
            aside = ~s.consistent
            self.aside_branch_correct += (branch_ok & aside[:, None]).sum(0)
            self.aside_joint_correct += ((s.joint_class == target) & aside).sum()
            # log-probabilities once; each alpha only rescales the branches' sum (the argmax
            # needs no renormalisation)
            fine_lp = torch.log_softmax(logits.float(), dim=-1)
            prior = sum(
                branch_log_probs(b, g, self.num_classes)
                for b, g in zip(branch_logits, groups, strict=True)
            )
            for k, a in enumerate(self.alpha_grid):
                jp = (fine_lp + a * prior).argmax(-1)
                self.grid_correct[k] += (jp == target).sum()
        else:
            self.grid_correct += fine_ok.sum()
        self.kept += s.consistent.sum()
        self.kept_correct += (fine_ok & s.consistent).sum()
        self.aside_fine_correct += (fine_ok & ~s.consistent).sum()
        if self.with_confusion:
            idx = target * self.num_classes + s.fine_class
            self.confusion += torch.bincount(idx, minlength=self.num_classes**2).view_as(
                self.confusion
            )

    def compute(self) -> dict:
        n = max(int(self.n), 1)
        kept = int(self.kept)
        aside = int(self.n) - kept
        ratio = lambda a, b: float(a) / b if b else float("nan")  # noqa: E731
        best = int(torch.argmax(self.grid_correct)) if len(self.alpha_grid) else 0
        out = {
            "num_samples": int(self.n),
            "fine_accuracy": ratio(self.fine_correct, n),
            "joint_accuracy": ratio(self.joint_correct, n),
            "alpha": self.alpha,
            "branch_accuracy": [ratio(c, n) for c in self.branch_correct.tolist()],
            "joint_accuracy_by_alpha": {
                f"{a:g}": ratio(c, n)
                for a, c in zip(self.alpha_grid, self.grid_correct.tolist(), strict=True)
            },
            "best_alpha": self.alpha_grid[best] if self.alpha_grid else self.alpha,
            "consistency": {
                "kept_fraction": ratio(kept, n),
                "kept_accuracy": ratio(self.kept_correct, kept),
                "set_aside": aside,
                "set_aside_fine_accuracy": ratio(self.aside_fine_correct, aside),
                "set_aside_joint_accuracy": ratio(self.aside_joint_correct, aside),
                "set_aside_branch_accuracy": [
                    ratio(c, aside) for c in self.aside_branch_correct.tolist()
                ],
            },
        }
        if self.with_confusion:
            out["confusion"] = self.confusion.tolist()
        return out
