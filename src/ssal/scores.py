"""The counts behind every figure the paper reports, batch by batch, and the figures from them.

Plain torch: ``batch_counts`` turns one batch of logits into integer counts (fine and joint
right, each branch right, the set-aside analysis, +JP right at every alpha of a grid, the
confusion matrix); counts add up over batches (and processes); ``figures`` turns the sums into
accuracies. ``evaluate_model`` sums them in a loop, ``SSALMetrics`` as torchmetrics states, so
the figures of a validation epoch and of ``ssal evaluate`` are computed by the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ssal.analysis import set_aside_figures
from ssal.predict import branch_log_probs, structured_predict

__all__ = ["ALPHA_GRID", "batch_counts", "count_shapes", "figures"]

ALPHA_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0.0, 0.05, ..., 1.0


def count_shapes(num_classes: int, num_branches: int, grid: int, confusion: bool) -> dict:
    """Shape of every count ``batch_counts`` returns (zeros of these start a sum)."""
    shapes: dict[str, tuple[int, ...]] = {
        "n": (),
        "fine_correct": (),
        "joint_correct": (),
        "grid_correct": (grid,),
        "branch_correct": (num_branches,),
        "kept": (),
        "kept_correct": (),
        "aside_fine_correct": (),
        "aside_joint_correct": (),
        "aside_branch_correct": (num_branches,),
    }
    if confusion:
        shapes["confusion"] = (num_classes, num_classes)
    return shapes


@torch.no_grad()
def batch_counts(
    logits: torch.Tensor,
    branch_logits: Sequence[torch.Tensor],
    target: torch.Tensor,
    group_indices: Sequence[torch.Tensor],
    alpha: float,
    alpha_grid: Sequence[float] = ALPHA_GRID,
    confusion: bool = True,
) -> dict[str, torch.Tensor]:
    """Integer counts of one batch: ``logits (N, C)``, ``branch_logits [(N, G_i)]``,
    ``target (N,)``; ``group_indices[i]`` maps each class to branch i's group ``(C,)``."""
    num_classes = logits.shape[-1]
    s = structured_predict(logits, branch_logits, group_indices, alpha)
    fine_ok = s.fine_class == target
    joint_ok = s.joint_class == target
    aside = ~s.consistent
    b = len(group_indices)
    out = {
        "n": torch.tensor(target.numel(), device=target.device),
        "fine_correct": fine_ok.sum(),
        "joint_correct": joint_ok.sum(),
        "kept": s.consistent.sum(),
        "kept_correct": (fine_ok & s.consistent).sum(),
        "aside_fine_correct": (fine_ok & aside).sum(),
        "aside_joint_correct": (joint_ok & aside).sum(),
    }
    if b:
        coarse = torch.stack([g[target] for g in group_indices], 1)
        branch_ok = s.branch_group == coarse
        out["branch_correct"] = branch_ok.sum(0)
        out["aside_branch_correct"] = (branch_ok & aside[:, None]).sum(0)
        # log-probabilities once; each alpha only rescales the branches' sum (the argmax needs
        # no renormalisation)
        fine_lp = torch.log_softmax(logits.float(), dim=-1)
        prior = sum(
            branch_log_probs(x, g, num_classes)
            for x, g in zip(branch_logits, group_indices, strict=True)
        )
        out["grid_correct"] = torch.stack(
            [((fine_lp + a * prior).argmax(-1) == target).sum() for a in alpha_grid]
        )
    else:
        zeros = torch.zeros(0, dtype=torch.long, device=target.device)
        out["branch_correct"] = out["aside_branch_correct"] = zeros
        out["grid_correct"] = fine_ok.sum().expand(len(alpha_grid))
    if confusion:
        idx = target * num_classes + s.fine_class
        out["confusion"] = torch.bincount(idx, minlength=num_classes**2).view(
            num_classes, num_classes
        )
    return {k: v.long() for k, v in out.items()}


def figures(
    counts: Mapping[str, torch.Tensor], alpha: float, alpha_grid: Sequence[float] = ALPHA_GRID
) -> dict[str, Any]:
    """Accuracies from summed counts: ``fine_accuracy`` (+TR), ``joint_accuracy`` (+JP at
    ``alpha``), ``branch_accuracy``, ``joint_accuracy_by_alpha``, ``set_aside`` (the paper's
    analysis) and, when counted, ``confusion``."""
    c = {k: v.tolist() for k, v in counts.items()}
    n = int(c["n"])
    ratio = lambda a, b: float(a) / b if b else float("nan")  # noqa: E731
    out: dict[str, Any] = {
        "num_samples": n,
        "fine_accuracy": ratio(c["fine_correct"], n),
        "joint_accuracy": ratio(c["joint_correct"], n),
        "alpha": float(alpha),
        "branch_accuracy": [ratio(x, n) for x in c["branch_correct"]],
        "joint_accuracy_by_alpha": {
            f"{a:g}": ratio(x, n) for a, x in zip(alpha_grid, c["grid_correct"], strict=True)
        },
        "set_aside": set_aside_figures(
            n,
            c["fine_correct"],
            c["kept"],
            c["kept_correct"],
            c["aside_fine_correct"],
            c["aside_joint_correct"],
            c["aside_branch_correct"],
        ),
    }
    if "confusion" in c:
        out["confusion"] = c["confusion"]
    return out
