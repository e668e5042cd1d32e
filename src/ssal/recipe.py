"""The paper's optimiser recipe in plain PyTorch: SGD with parameter groups and its schedule.

SGD (Nesterov where the run uses it) with L2 on layer weights, a separate value for the SSAL
branches, none on norm layers and biases unless asked, and any other value per kind of
parameter (``DECAY_KINDS``: the authors' Keras runs decay classifier and branch dense layers
differently per model); the learning rate warms up linearly over ``m`` epochs, then decays
linearly to about 0 at the last epoch, counted from 0 (the Keras runs) or from 1 (the authors'
PyTorch trainer). ``SSALModule`` uses these, and so can a hand-written loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from ssal.errors import UserError

__all__ = [
    "DECAY_KINDS",
    "check_recipe",
    "decay_by_kind",
    "lr_factor",
    "parameter_groups",
    "parameter_kinds",
    "sgd",
    "warmup_linear_decay",
]

DECAY_KINDS = tuple(
    f"{part}.{layer}.{role}"
    for part in ("backbone", "branches")
    for layer in ("conv", "linear", "norm")
    for role in ("weight", "bias")
)
"""Kinds of parameters weight decay can tell apart: the SSAL branches or the rest (backbone),
convolution, linear (classifier, dense, squeeze-excitation) or normalisation layer, weight or
bias."""

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

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
            raise UserError(f"{name} must be a number of 0 to {MAX_RECIPE_VALUE:g}, got {v!r}")


def lr_factor(epoch: float, warmup: int, total: int) -> float:
    """The paper's schedule at (0-based, possibly fractional) ``epoch``, as a factor of peak lr.

    ``(e+1)/m`` while ``e < m``, then ``1 - (e+1-m)/(E+1-m)``: linear warm-up over ``m``
    epochs, linear decay to about 0 at the last epoch ``E - 1``. At whole epochs this is the
    paper's formula; between them (per-step schedules) it is the line joining them, i.e. the
    interpolation of ``1/m, 1, 0`` at epochs ``0, m-1, E`` (the authors' PyTorch rule).
    """
    if epoch < warmup - 1:
        return (epoch + 1) / warmup
    return min(1.0, max(0.0, 1.0 - (epoch + 1 - warmup) / (total + 1 - warmup)))


def _layer_kind(module: nn.Module, param: torch.Tensor) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _NORMS):
        return "norm"
    return {1: "norm", 2: "linear"}.get(param.ndim, "conv")  # other modules: by shape


def parameter_kinds(net: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(kind, parameter)`` for every trainable parameter (kinds: ``DECAY_KINDS``); branch
    parameters are those under ``branches.`` (``SSALModel``'s layout)."""
    for name, module in net.named_modules():
        part = "branches" if name == "branches" or name.startswith("branches.") else "backbone"
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                role = "bias" if pname == "bias" else "weight"
                yield f"{part}.{_layer_kind(module, p)}.{role}", p


def decay_by_kind(
    weight_decay: float,
    branch_weight_decay: float | None = None,
    decay_norm_and_bias: bool = False,
    overrides: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The weight decay of every kind of parameter: ``weight_decay`` (backbone) or
    ``branch_weight_decay`` (branches, default the same) on convolution and linear weights,
    and on norm layers and biases only with ``decay_norm_and_bias``; ``overrides`` then set
    any kind's value (``ValueError`` for an unknown kind)."""
    unknown = sorted(set(overrides or {}) - set(DECAY_KINDS))
    if unknown:
        raise UserError(f"unknown weight decay kinds {unknown}; known: {', '.join(DECAY_KINDS)}")
    branch_wd = weight_decay if branch_weight_decay is None else branch_weight_decay
    table = {}
    for kind in DECAY_KINDS:
        part, layer, role = kind.split(".")
        decays = decay_norm_and_bias or (layer != "norm" and role == "weight")
        table[kind] = (branch_wd if part == "branches" else weight_decay) if decays else 0.0
    return {**table, **{k: float(v) for k, v in (overrides or {}).items()}}


def parameter_groups(
    net: nn.Module,
    weight_decay: float,
    branch_weight_decay: float | None = None,
    decay_norm_and_bias: bool = False,
    by_kind: Mapping[str, float] | None = None,
    backbone_lr_factor: float = 1.0,
) -> list[dict]:
    """Optimiser parameter groups with their weight decay (``decay_by_kind``).

    Without ``by_kind``: ``backbone`` and ``branches`` (layer weights, and norm layers and
    biases with ``decay_norm_and_bias``) and ``no_decay``. With it: one group per kind of
    parameter, named after it (``backbone.linear.bias``, ...). Values are PyTorch
    ``weight_decay`` (a Keras ``l2(wd)`` is ``2 * wd``). With ``backbone_lr_factor``
    (fine-tuning a pretrained backbone) ``no_decay`` splits into ``backbone_no_decay`` and
    ``branches_no_decay``, and the backbone's groups carry ``lr_factor``: their learning rate
    is the peak times it.
    """
    decay = decay_by_kind(weight_decay, branch_weight_decay, decay_norm_and_bias, by_kind)
    split = backbone_lr_factor != 1.0
    plain = ("backbone", "branches", "no_decay", "backbone_no_decay", "branches_no_decay")
    groups: dict[str, list[nn.Parameter]] = {k: [] for k in (DECAY_KINDS if by_kind else plain)}
    for kind, p in parameter_kinds(net):
        part, layer, role = kind.split(".")
        if by_kind:
            key = kind
        elif decay_norm_and_bias or (layer != "norm" and role == "weight"):
            key = part
        else:
            key = f"{part}_no_decay" if split else "no_decay"
        groups[key].append(p)
    wd = {k: 0.0 for k in plain[2:]} | {"backbone": weight_decay, **decay}
    wd["branches"] = decay["branches.conv.weight"]
    out = []
    for key, params in groups.items():
        if params:
            group = {"params": params, "weight_decay": wd[key], "name": key}
            if split and key.startswith("backbone"):
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
    first_epoch: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_factor`` as a scheduler: stepped once per epoch, or once per step when
    ``steps_per_epoch`` is given (the same line, reached in small steps).

    ``first_epoch`` is the number the schedule gives the first epoch: 0 as Keras counts (the
    CIFAR runs), 1 as the authors' PyTorch trainer counts, whose warm-up of ``m`` epochs thus
    starts at ``2/m`` and whose last epoch runs at 0.
    """
    total = max(1, total)
    warmup = min(warmup, total)
    if steps_per_epoch:
        per_epoch = max(1, math.ceil(steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step / per_epoch + first_epoch, warmup, total)
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(epoch + first_epoch, warmup, total)
    )
