"""Stratified held-out splits and per-channel statistics of uint8 images."""

from __future__ import annotations

import math

import torch

from ssal.errors import UserError

__all__ = ["channel_stats", "stratified_split"]


def _heldout_count(heldout: int | float, total: int) -> int:
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float)):
        raise UserError(f"heldout must be a count or a fraction, got {heldout!r}")
    if not math.isfinite(heldout) or heldout < 0:
        raise UserError(f"heldout must be >= 0, got {heldout!r}")
    if heldout < 1:
        count = round(heldout * total)
    else:
        if heldout != int(heldout):
            raise UserError(
                f"heldout={heldout!r} is neither a fraction below 1 nor a whole number of samples"
            )
        count = int(heldout)
    if count >= total and count > 0:
        raise UserError(
            f"heldout={heldout!r} would hold out {count} of {total} samples; leave at least one "
            "sample for training"
        )
    return count


def _allocate(counts: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Split ``k`` held-out samples over classes proportionally to ``counts``.

    Largest-remainder rounding of the fair shares ``k * n_c / N`` (seeded random tie-break),
    then, where possible, every class keeps at least one training sample and every class with
    at least two samples gives at least one, taking from the classes furthest above their share.
    """
    sizes = counts.tolist()
    total = sum(sizes)
    quota = [k * n / total for n in sizes]
    alloc = [math.floor(q) for q in quota]
    tie = torch.rand(len(sizes), generator=generator, dtype=torch.float64).tolist()
    by_remainder = sorted(range(len(sizes)), key=lambda i: (quota[i] - alloc[i], tie[i]))
    for i in by_remainder[::-1][: k - sum(alloc)]:
        alloc[i] += 1

    def surplus(i: int) -> tuple[float, float]:
        return (alloc[i] - quota[i], tie[i])

    # Leave every class a training sample where possible.
    cap = [n - 1 for n in sizes]
    excess = 0
    for i, c in enumerate(cap):
        if alloc[i] > max(c, 0):
            excess += alloc[i] - max(c, 0)
            alloc[i] = max(c, 0)
    for _ in range(excess):
        room = [i for i in range(len(sizes)) if alloc[i] < cap[i]]
        if not room:  # heldout larger than the samples that can spare one: use any sample left
            room = [i for i in range(len(sizes)) if alloc[i] < sizes[i]]
        alloc[min(room, key=surplus)] += 1
    # Every class with >= 2 samples contributes, when there are enough to go round.
    eligible = [i for i, n in enumerate(sizes) if n >= 2]
    if k >= len(eligible):
        for i in eligible:
            if alloc[i] == 0:
                donors = [j for j in range(len(sizes)) if alloc[j] >= 2]
                if not donors:
                    break
                alloc[max(donors, key=surplus)] -= 1
                alloc[i] += 1
    return torch.tensor(alloc, dtype=torch.long)


def stratified_split(
    labels: torch.Tensor, heldout: int | float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into a training part and a stratified held-out part.

    Args:
        labels: int tensor (N,) of class indices >= 0.
        heldout: a fraction in [0, 1) of the samples, or a whole count >= 1.
        seed: seeds the choice of samples; the same inputs give the same split.

    Returns:
        ``(train_idx, heldout_idx)``: sorted int64 index tensors, disjoint, together covering
        ``0..N-1``. Each class contributes proportionally to its size (at least one sample when
        the held-out size allows).
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise UserError("labels must be a 1-D tensor of class indices")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise UserError(f"labels must be an integer tensor, got {labels.dtype}")
    total = len(labels)
    if total == 0:
        raise UserError("labels is empty; nothing to split")
    labels = labels.detach().to("cpu", torch.long)
    if int(labels.min()) < 0:
        raise UserError("labels must be >= 0")
    k = _heldout_count(heldout, total)
    everything = torch.arange(total)
    if k == 0:
        return everything, torch.empty(0, dtype=torch.long)

    generator = torch.Generator().manual_seed(int(seed))
    counts = torch.bincount(labels)
    alloc = _allocate(counts, k, generator)
    # Random order within each class: shuffle all, then stable-sort by label.
    perm = torch.randperm(total, generator=generator)
    order = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[order]
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(total) - starts[sorted_labels]
    take = rank_in_class < alloc[sorted_labels]
    heldout_idx = order[take].sort().values
    train_idx = order[~take].sort().values
    return train_idx, heldout_idx


def channel_stats(images: torch.Tensor, chunk_size: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W) scaled to [0, 1].

    Sums are accumulated exactly in int64 over chunks of ``chunk_size`` images, so only one
    small chunk is ever converted.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise UserError(
            f"channel_stats needs uint8 images (N, C, H, W), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if len(images) == 0:
        raise UserError("channel_stats needs at least one image")
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}")
    channels = images.shape[1]
    sums = [0] * channels
    squares = [0] * channels
    for start in range(0, len(images), chunk_size):
        chunk = images[start : start + chunk_size].to(torch.int64)
        s = chunk.sum(dim=(0, 2, 3)).tolist()
        q = (chunk * chunk).sum(dim=(0, 2, 3)).tolist()
        sums = [a + b for a, b in zip(sums, s, strict=True)]
        squares = [a + b for a, b in zip(squares, q, strict=True)]
    n = images.numel() // channels
    means = [s / (n * 255.0) for s in sums]
    # n^2 * var * 255^2 = n * sum(x^2) - sum(x)^2, computed exactly with Python integers.
    stds = [
        math.sqrt(max(n * q - s * s, 0)) / (n * 255.0) for s, q in zip(sums, squares, strict=True)
    ]
    return means, stds
