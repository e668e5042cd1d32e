"""The paper's optimiser recipe in plain PyTorch: SGD with parameter groups and its schedule.

SGD (Nesterov where the run uses it) with L2 on layer weights, a separate value for the SSAL
branches, none on norm layers and biases unless asked; the learning rate warms up linearly over
``m`` epochs, then decays linearly to about 0 at the last epoch. ``SSALModule`` uses these, and
so can a hand-written loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["check_recipe", "lr_factor", "parameter_groups", "sgd", "warmup_linear_decay"]

MAX_RECIPE_VALUE = 1e6
"""Largest learning rate, momentum, weight decay or factor accepted: far past any useful value
(values near float32's limit overflow in SGD's update instead of failing cleanly)."""


def check_recipe(
    lr: float,
    momentum: float,
    weight_decay: float,
    branch_weight_decay: float | None = None,
    backbone_lr_factor: float = 1.0,
) -> None:
    """``ValueError`` naming the first value SGD cannot use: not a number, NaN, negative or
    over ``MAX_RECIPE_VALUE``."""
    values = {
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "branch_weight_decay": 0.0 if branch_weight_decay is None else branch_weight_decay,
        "backbone_lr_factor": backbone_lr_factor,
    }
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_RECIPE_VALUE:
            raise ValueError(f"{name} must be a number of 0 to {MAX_RECIPE_VALUE:g}, got {v!r}")


def lr_factor(epoch: float, warmup: int, total: int) -> float:
    """The paper's schedule at (0-based, possibly fractional) ``epoch``, as a factor of peak lr.

    ``(e+1)/m`` while ``e < m``, then ``1 - (e+1-m)/(E+1-m)``: linear warm-up over ``m``
    epochs, linear decay to about 0 at the last epoch ``E - 1``. At whole epochs this is the
    paper's formula; between them (per-step schedules) it is the line joining them.
    """
    if epoch < warmup - 1:
        return (epoch + 1) / warmup
    return min(1.0, max(0.0, 1.0 - (epoch + 1 - warmup) / (total + 1 - warmup)))


def parameter_groups(
    net: nn.Module,
    weight_decay: float,
    branch_weight_decay: float | None = None,
    decay_norm_and_bias: bool = False,
    backbone_lr_factor: float = 1.0,
) -> list[dict]:
    """Optimiser parameter groups: ``backbone`` and ``branches`` weights with their decay,
    ``no_decay`` for 1-D parameters (norm layers, biases) unless ``decay_norm_and_bias``.

    Values are PyTorch ``weight_decay`` (a Keras ``l2(wd)`` is ``2 * wd``); branch parameters
    are those whose name starts with ``branches.`` (``SSALModel``'s layout). With
    ``backbone_lr_factor`` (fine-tuning a pretrained backbone) the backbone's groups, its 1-D
    parameters included, carry ``lr_factor``: their learning rate is the peak times it.
    """
    branch_wd = weight_decay if branch_weight_decay is None else branch_weight_decay
    split = backbone_lr_factor != 1.0
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        part = "branches" if name.startswith("branches.") else "backbone"
        if p.ndim <= 1 and not decay_norm_and_bias:
            part = f"{part}_no_decay" if split else "no_decay"
        groups.setdefault(part, []).append(p)
    wd = {"backbone": weight_decay, "branches": branch_wd}
    out = []
    for key in ("backbone", "branches", "no_decay", "backbone_no_decay", "branches_no_decay"):
        if key in groups:
            group = {"params": groups[key], "weight_decay": wd.get(key, 0.0), "name": key}
            if key.startswith("backbone") and split:
                group["lr_factor"] = backbone_lr_factor
            out.append(group)
    return out


def sgd(
    groups: list[dict], lr: float, momentum: float, nesterov: bool, fused: bool = False
) -> torch.optim.SGD:
    """SGD over ``groups`` (``fused`` kernels on CUDA); a group's ``lr_factor`` scales its
    learning rate."""
    for g in groups:
        if "lr_factor" in g:
            g["lr"] = lr * g["lr_factor"]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused or None)


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer,
    warmup: int,
    total: int,
    steps_per_epoch: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_factor`` as a scheduler: stepped once per epoch, or once per step when
    ``steps_per_epoch`` is given (the same line, reached in small steps)."""
    total = max(1, total)
    warmup = min(warmup, total)
    if steps_per_epoch:
        per_epoch = max(1, math.ceil(steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step / per_epoch, warmup, total)
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(epoch, warmup, total)
    )
