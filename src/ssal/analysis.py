"""The paper's analysis of a trained model, computed from per-sample predictions.

Everything here is plain NumPy on small per-sample arrays (one int or float per image, never
logits), so a test set of any size fits; the counts behind each figure are sums over samples
and could be accumulated batch by batch. Inputs, for N images and B branches:

- ``fine_class (N,)`` and ``fine_prob (N,)``: the fine head's argmax and its softmax value;
- ``branch_group (N, B)``: each branch's argmax group;
- ``labels (N,)``: the true fine classes;
- ``groupings``: B groupings (``Grouping`` or ``(C,)`` arrays), ``g[c]`` the group of class c.

Figures:

- *set-aside analysis* (the paper's): predictions where some branch disagrees with the fine
  head (``branch_group[:, i] != g_i[fine_class]``) are set aside; accuracy on the rest, the
  fraction kept, and how often each head was right on the part set aside;
- *pairwise table*: if head i is right (wrong), how often is head j right; heads are the fine
  head (right: ``fine_class == label``) and each branch (right: ``branch_group == g_i[label]``);
- *risk-coverage*: abstaining on the least trusted predictions first, the fine head's error rate
  on what is kept (risk) against the share kept (coverage), with the area under that curve
  (AURC, lower is better), ranking by disagreement or by the fine head's confidence;
- *hierarchy-aware metrics*: coarse accuracy of the fine head's predictions and the severity of
  its mistakes over levels of groupings (see ``mistake_severity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ssal.grouping import Grouping

__all__ = [
    "MistakeSeverity",
    "PairwiseTable",
    "RiskCoverage",
    "coarse_accuracy",
    "confusion_matrix",
    "disagreements",
    "group_order",
    "head_correctness",
    "head_names",
    "hierarchy_metrics",
    "mistake_severity",
    "pairwise_table",
    "per_class_accuracy",
    "risk_coverage",
    "risk_coverage_by_confidence",
    "risk_coverage_by_disagreement",
    "set_aside_analysis",
    "set_aside_figures",
]

GroupingLike = Grouping | np.ndarray | Sequence[int]


def _assignment(g: GroupingLike) -> np.ndarray:
    return np.asarray(g.assignment if isinstance(g, Grouping) else g, dtype=np.int64)


def _ints(x: Any, ndim: int = 1) -> np.ndarray:
    a = np.asarray(x, dtype=np.int64)
    if ndim == 2 and a.ndim == 1 and a.size == 0:
        a = a.reshape(0, 0)
    if a.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D array of class or group indices, got {a.shape}")
    return a


def _branch_groups(branch_group: Any, n: int, groupings: Sequence[GroupingLike]) -> np.ndarray:
    b = np.asarray(branch_group, dtype=np.int64)
    if b.size == 0:
        b = b.reshape(n, 0)
    if b.ndim != 2 or b.shape != (n, len(groupings)):
        raise ValueError(
            f"branch_group must be (N, B) = ({n}, {len(groupings)}) for {len(groupings)} "
            f"groupings, got {b.shape}"
        )
    return b


def _ratio(a: float, b: float) -> float:
    return float(a) / b if b else float("nan")


# ------------------------------------------------------------------------- agreement
def disagreements(
    fine_class: Any, branch_group: Any, groupings: Sequence[GroupingLike]
) -> np.ndarray:
    """``(N, B)`` bool: where branch i's group differs from the fine class's group ``g_i[fine]``."""
    fine = _ints(fine_class)
    b = _branch_groups(branch_group, len(fine), groupings)
    if not groupings:
        return np.zeros((len(fine), 0), dtype=bool)
    expected = np.stack([_assignment(g)[fine] for g in groupings], axis=1)
    return b != expected


def head_names(groupings: Sequence[GroupingLike]) -> list[str]:
    """Names of the heads in the order of ``head_correctness``: the fine head, then branches."""
    names = ["fine head"]
    for i, g in enumerate(groupings):
        label = f" ({g.name})" if isinstance(g, Grouping) and g.name else ""
        names.append(f"branch {i + 1}{label}")
    return names


def head_correctness(
    fine_class: Any, branch_group: Any, labels: Any, groupings: Sequence[GroupingLike]
) -> np.ndarray:
    """``(1 + B, N)`` bool: row 0 whether the fine head is right, row i whether branch i is.

    Each head is judged on its own task: the fine head on the fine label, branch i on the
    label's group ``g_i[label]``.
    """
    fine, y = _ints(fine_class), _ints(labels)
    if fine.shape != y.shape:
        raise ValueError(f"fine_class {fine.shape} and labels {y.shape} differ in length")
    b = _branch_groups(branch_group, len(fine), groupings)
    rows = [fine == y] + [b[:, i] == _assignment(g)[y] for i, g in enumerate(groupings)]
    return np.stack(rows, axis=0)


def set_aside_figures(
    n: int,
    fine_correct: int,
    kept: int,
    kept_correct: int,
    aside_fine_correct: int,
    aside_joint_correct: int | None,
    aside_branch_correct: Sequence[int],
) -> dict[str, Any]:
    """The set-aside figures from their counts (one definition for ``set_aside_analysis`` and
    the streaming counts of ``ssal.scores``). Ratios over no images are NaN."""
    aside = n - kept
    out: dict[str, Any] = {
        "num_samples": int(n),
        "fine_accuracy": _ratio(fine_correct, n),
        "kept": int(kept),
        "kept_fraction": _ratio(kept, n),
        "kept_accuracy": _ratio(kept_correct, kept),
        "set_aside": int(aside),
        "set_aside_fraction": _ratio(aside, n),
        "set_aside_fine_accuracy": _ratio(aside_fine_correct, aside),
        "set_aside_branch_accuracy": [_ratio(c, aside) for c in aside_branch_correct],
    }
    if aside_joint_correct is not None:
        out["set_aside_joint_accuracy"] = _ratio(aside_joint_correct, aside)
    return out


def set_aside_analysis(
    fine_class: Any,
    branch_group: Any,
    labels: Any,
    groupings: Sequence[GroupingLike],
    joint_class: Any | None = None,
) -> dict[str, Any]:
    """The paper's analysis: set aside predictions where a branch disagrees with the fine head.

    Returns ``num_samples``, ``fine_accuracy`` (all images), ``kept``, ``kept_fraction``,
    ``kept_accuracy`` (fine head on the images where every branch agrees), ``set_aside``
    (count), ``set_aside_fraction``, and on the set-aside images ``set_aside_fine_accuracy``,
    ``set_aside_branch_accuracy`` (one per branch, on its own coarse task) and, when
    ``joint_class`` is given, ``set_aside_joint_accuracy``. Ratios over no images are NaN.
    """
    correct = head_correctness(fine_class, branch_group, labels, groupings)
    aside = disagreements(fine_class, branch_group, groupings).any(axis=1)
    fine_ok = correct[0]
    joint = None
    if joint_class is not None:
        joint = int(((_ints(joint_class) == _ints(labels)) & aside).sum())
    return set_aside_figures(
        correct.shape[1],
        int(fine_ok.sum()),
        int((~aside).sum()),
        int((fine_ok & ~aside).sum()),
        int((fine_ok & aside).sum()),
        joint,
        [int((row & aside).sum()) for row in correct[1:]],
    )


class PairwiseTable(NamedTuple):
    """Conditional accuracies between heads (rows: condition on head i, columns: head j).

    ``given_right[i, j]`` = P(head j right | head i right); ``given_wrong[i, j]`` =
    P(head j right | head i wrong); NaN where head i is never right (wrong).
    """

    heads: list[str]
    given_right: np.ndarray
    given_wrong: np.ndarray
    num_right: np.ndarray
    num_wrong: np.ndarray


def pairwise_table(correct: Any, heads: Sequence[str] | None = None) -> PairwiseTable:
    """Pairwise table from ``(H, N)`` per-head correctness (e.g. ``head_correctness``).

    Built from the ``(H, H)`` co-occurrence counts ``R R^T`` and ``W R^T``, which add up over
    batches.
    """
    r = np.asarray(correct, dtype=bool)
    if r.ndim != 2:
        raise ValueError(f"correct must be (H, N), got shape {r.shape}")
    ri = r.astype(np.int64)
    wi = (~r).astype(np.int64)
    both_right = ri @ ri.T
    wrong_right = wi @ ri.T
    num_right, num_wrong = ri.sum(1), wi.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        given_right = np.where(num_right[:, None] > 0, both_right / num_right[:, None], np.nan)
        given_wrong = np.where(num_wrong[:, None] > 0, wrong_right / num_wrong[:, None], np.nan)
    names = list(heads) if heads is not None else [f"head {i}" for i in range(len(r))]
    if len(names) != len(r):
        raise ValueError(f"{len(names)} head names for {len(r)} heads")
    return PairwiseTable(names, given_right, given_wrong, num_right, num_wrong)


# ---------------------------------------------------------------------- risk-coverage
class RiskCoverage(NamedTuple):
    """Risk (error rate on the kept images) against coverage (share kept), and its area.

    One point per distinct ranking level (images that tie are kept or dropped together):
    ``coverage`` rises to 1, ``risk[k]`` is the error rate among the first ``coverage[k] * N``
    images. ``aurc`` is the mean of the risk over the N coverages ``1/N, 2/N, ..., 1``, ties
    broken at random in expectation, so it does not depend on the order of tied images.
    """

    coverage: np.ndarray
    risk: np.ndarray
    aurc: float


def risk_coverage(correct: Any, *keys: Any) -> RiskCoverage:
    """Risk-coverage curve when images are kept in decreasing order of ``keys``.

    ``correct (N,)`` bool: whether the prediction is right. ``keys``: one or more ``(N,)``
    arrays, the first most significant; an image with larger keys is trusted more and kept
    first. Abstaining on a share ``1 - coverage`` drops the least trusted images.
    """
    ok = np.asarray(correct, dtype=bool)
    if ok.ndim != 1 or ok.size == 0:
        raise ValueError(f"correct must be a non-empty (N,) array, got shape {ok.shape}")
    if not keys:
        raise ValueError("risk_coverage needs at least one ranking key")
    ks = [np.asarray(k, dtype=np.float64) for k in keys]
    for k in ks:
        if k.shape != ok.shape:
            raise ValueError(f"ranking key of shape {k.shape} for {ok.shape} predictions")
    order = np.lexsort(tuple(-k for k in reversed(ks)))
    n = len(ok)
    errors = (~ok[order]).astype(np.float64)
    sorted_keys = np.stack([k[order] for k in ks])
    new_level = np.ones(n, dtype=bool)
    new_level[1:] = np.any(sorted_keys[:, 1:] != sorted_keys[:, :-1], axis=0)
    starts = np.flatnonzero(new_level)
    ends = np.append(starts[1:], n)  # exclusive
    cum_err = np.concatenate([[0.0], np.cumsum(errors)])
    coverage = ends / n
    risk = cum_err[ends] / ends
    # Expected risk at every k = 1..N with ties broken at random: inside a level, errors
    # arrive at the level's mean rate.
    level = np.cumsum(new_level) - 1
    before = starts[level]
    rate = (cum_err[ends] - cum_err[starts]) / (ends - starts)
    k = np.arange(1, n + 1)
    risk_k = (cum_err[before] + (k - before) * rate[level]) / k
    return RiskCoverage(coverage, risk, float(risk_k.mean()))


def risk_coverage_by_confidence(correct: Any, fine_prob: Any) -> RiskCoverage:
    """Abstain on the fine head's least confident predictions (lowest max softmax) first."""
    return risk_coverage(correct, fine_prob)


def risk_coverage_by_disagreement(
    correct: Any, num_disagreeing: Any, fine_prob: Any
) -> RiskCoverage:
    """Abstain first where more branches disagree with the fine head; ties by confidence."""
    return risk_coverage(correct, -np.asarray(num_disagreeing, dtype=np.float64), fine_prob)


# ---------------------------------------------------------------- hierarchy-aware metrics
def coarse_accuracy(pred: Any, labels: Any, grouping: GroupingLike) -> float:
    """Share of fine predictions that land in the label's group: ``g[pred] == g[label]``."""
    g = _assignment(grouping)
    p, y = _ints(pred), _ints(labels)
    return _ratio((g[p] == g[y]).sum(), len(y))


class MistakeSeverity(NamedTuple):
    """Severity of the wrong predictions over L levels of groupings.

    ``mean``: average severity over mistakes (NaN without mistakes); ``histogram[s]``: number
    of mistakes of severity s (0..L).
    """

    num_mistakes: int
    mean: float
    histogram: np.ndarray


def mistake_severity(pred: Any, labels: Any, levels: Sequence[GroupingLike]) -> MistakeSeverity:
    """How far apart in the hierarchy the fine head's mistakes land.

    ``levels``: groupings treated as the levels of a hierarchy (coarse to fine; the count does
    not depend on the order). The severity of a wrong prediction is the number of levels at
    which prediction and label fall into different groups: 0 when the mistake stays inside the
    label's group at every level (a "better" mistake), L when it leaves it at every level.
    """
    p, y = _ints(pred), _ints(labels)
    wrong = p != y
    pw, yw = p[wrong], y[wrong]
    severity = np.zeros(len(pw), dtype=np.int64)
    for g in levels:
        a = _assignment(g)
        severity += a[pw] != a[yw]
    hist = np.bincount(severity, minlength=len(levels) + 1)
    return MistakeSeverity(int(wrong.sum()), _ratio(severity.sum(), len(pw)), hist)


def hierarchy_metrics(
    pred: Any, labels: Any, levels: Sequence[GroupingLike], names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Coarse accuracy at every level and the mistake severity over all of them, as a dict."""
    if names is None:
        names = [
            g.name if isinstance(g, Grouping) else f"level {i + 1}" for i, g in enumerate(levels)
        ]
    sev = mistake_severity(pred, labels, levels)
    return {
        "levels": [
            {
                "name": name,
                "num_groups": int(_assignment(g).max()) + 1,
                "coarse_accuracy": coarse_accuracy(pred, labels, g),
            }
            for name, g in zip(names, levels, strict=True)
        ],
        "num_mistakes": sev.num_mistakes,
        "mean_severity": sev.mean,
        "severity_histogram": sev.histogram.tolist(),
    }


# ------------------------------------------------------------------------- per class
def confusion_matrix(pred: Any, labels: Any, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts; rows are true classes, columns predicted classes."""
    p, y = _ints(pred), _ints(labels)
    idx = y * num_classes + p
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(pred: Any, labels: Any, num_classes: int) -> np.ndarray:
    """``(C,)`` accuracy of the fine head per true class (NaN for classes without images)."""
    p, y = _ints(pred), _ints(labels)
    total = np.bincount(y, minlength=num_classes)
    right = np.bincount(y[p == y], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / np.maximum(total, 1), np.nan)


def group_order(levels: Sequence[GroupingLike], num_classes: int | None = None) -> np.ndarray:
    """A class order that keeps each group together: by group at each level, coarse first.

    ``levels`` coarse to fine; without levels the identity order of ``num_classes``.
    """
    if not levels:
        if num_classes is None:
            raise ValueError("group_order needs levels or num_classes")
        return np.arange(num_classes)
    keys = [_assignment(g) for g in levels]
    c = len(keys[0])
    return np.lexsort((np.arange(c), *reversed(keys)))
