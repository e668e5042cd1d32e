"""Joint prediction (+JP) and structured predictions: a fine class and one group per branch.

+JP: ``p(c) ∝ softmax(fine)[c] * prod_i softmax(branch_i)[g_i[c]] ** alpha``, computed in log
space with one gather per branch (no loops over classes or samples). Image files to
predictions: ``ssal.inference``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ssal.errors import UserError
from ssal.grouping import Grouping

__all__ = [
    "GroupingLike",
    "StructuredPrediction",
    "branch_log_probs",
    "group_index",
    "joint_log_probs",
    "joint_predict",
    "structured_predict",
]

GroupingLike = Grouping | np.ndarray | torch.Tensor | Sequence[int]


def group_index(g: GroupingLike, device: torch.device | str | None = None) -> torch.Tensor:
    """A grouping (``Grouping``, array, tensor or list) as the long tensor ``(C,)`` of each
    class's group, on ``device`` (default: where a tensor is, else the CPU)."""
    a = g.assignment if isinstance(g, Grouping) else g
    return torch.as_tensor(
        np.asarray(a) if not isinstance(a, torch.Tensor) else a, dtype=torch.long, device=device
    )


def _alphas(alpha: float | Sequence[float], n: int) -> list[float]:
    alphas = [float(alpha)] * n if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != n:
        raise UserError(f"{len(alphas)} alphas for {n} branches")
    return alphas


def joint_log_probs(
    fine_logits: torch.Tensor,
    branch_logits: Sequence[torch.Tensor],
    groupings: Sequence[GroupingLike],
    alpha: float | Sequence[float] = 0.3,
) -> torch.Tensor:
    """Log of the joint prediction ``(N, C)``, normalised over classes (float32)."""
    if len(branch_logits) != len(groupings):
        raise ValueError(f"{len(branch_logits)} branch outputs for {len(groupings)} groupings")
    out = torch.log_softmax(fine_logits.float(), dim=-1)
    for a, b, g in zip(_alphas(alpha, len(groupings)), branch_logits, groupings, strict=True):
        if a:
            out = out + a * branch_log_probs(b, g, out.shape[-1])
    return torch.log_softmax(out, dim=-1)


def branch_log_probs(
    branch_logits: torch.Tensor, grouping: GroupingLike, num_classes: int
) -> torch.Tensor:
    """``log softmax(branch)[g[c]]`` for every class c: ``(N, G)`` -> ``(N, C)`` (one gather)."""
    idx = group_index(grouping, branch_logits.device)
    if idx.numel() != num_classes:
        raise ValueError(f"grouping covers {idx.numel()} classes, logits {num_classes}")
    return torch.log_softmax(branch_logits.float(), dim=-1).index_select(-1, idx)


def joint_predict(
    fine_logits: torch.Tensor,
    branch_logits: Sequence[torch.Tensor],
    groupings: Sequence[GroupingLike],
    alpha: float | Sequence[float] = 0.3,
) -> torch.Tensor:
    """Joint (+JP) class probabilities ``(N, C)``; rows sum to 1; ``alpha=0`` is softmax(fine)."""
    return joint_log_probs(fine_logits, branch_logits, groupings, alpha).exp()


class StructuredPrediction(NamedTuple):
    """Per image: the fine head's answer, each branch's group, agreement and the +JP answer.

    Shapes: ``(N,)`` for fine/joint fields and ``consistent``; ``(N, B)`` for branch fields.
    """

    fine_class: torch.Tensor
    fine_prob: torch.Tensor
    branch_group: torch.Tensor
    branch_prob: torch.Tensor
    agree: torch.Tensor
    consistent: torch.Tensor
    joint_class: torch.Tensor
    joint_prob: torch.Tensor


@torch.no_grad()
def structured_predict(
    fine_logits: torch.Tensor,
    branch_logits: Sequence[torch.Tensor],
    groupings: Sequence[GroupingLike],
    alpha: float | Sequence[float] = 0.3,
    joint: torch.Tensor | None = None,
) -> StructuredPrediction:
    """Fine class, each branch's group and whether it agrees with the fine class's group.

    ``consistent`` is true where every branch agrees: the paper keeps those predictions and
    sets the others aside as doubtful. ``joint``: the +JP probabilities of these logits at
    ``alpha`` where the caller has them already (``joint_predict``; saves computing them).
    """
    fine_p = torch.softmax(fine_logits.float(), dim=-1)
    fine_prob, fine_class = fine_p.max(dim=-1)
    n = fine_logits.shape[0]
    groups, probs, agree = [], [], []
    for b, g in zip(branch_logits, groupings, strict=True):
        p, k = torch.softmax(b.float(), dim=-1).max(dim=-1)
        groups.append(k)
        probs.append(p)
        agree.append(group_index(g, k.device)[fine_class] == k)
    stack = lambda xs, dt: torch.stack(xs, 1) if xs else torch.zeros(n, 0, dtype=dt)  # noqa: E731
    agree_t = stack(agree, torch.bool)
    if joint is None:
        joint = joint_predict(fine_logits, branch_logits, groupings, alpha)
    joint_prob, joint_class = joint.max(dim=-1)
    return StructuredPrediction(
        fine_class=fine_class,
        fine_prob=fine_prob,
        branch_group=stack(groups, torch.long),
        branch_prob=stack(probs, torch.float32),
        agree=agree_t,
        consistent=agree_t.all(dim=1),
        joint_class=joint_class,
        joint_prob=joint_prob,
    )
