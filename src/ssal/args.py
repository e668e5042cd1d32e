"""``SSALModule``'s arguments in groups, one per concern, as configs spell them.

A config's ``model:`` section holds ``network``, ``groupings``, ``loss``, ``optim`` and
``speed`` mappings (these dataclasses) beside ``num_classes``, ``in_channels`` and ``alpha``;
the command line reaches every field (``--model.optim.lr 0.1``). The keys of the flat layout
before 0.3 (``model.lr``) are in ``RENAMED_KEYS``, so a config error can name the new key, and
``grouped_args`` turns a flat recipe (a registry entry's) into these groups.

Plain dataclasses of plain values: the method layer uses them without the training engine,
and ``as_plain`` turns them into what a checkpoint may hold (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, TypeVar

from ssal.errors import UserError
from ssal.grouping import Grouping

__all__ = [
    "RENAMED_KEYS",
    "GroupingArgs",
    "LossArgs",
    "NetworkArgs",
    "OptimArgs",
    "SpeedArgs",
    "as_plain",
    "grouped_args",
    "renamed_key",
]


@dataclass(frozen=True)
class NetworkArgs:
    """The network: a registered ``name`` (``ssal models`` lists them), where its branches go
    (``positions``: module names; ``layouts``: the branch layout language, one for all or one
    per branch), the batch-norm ``momentum`` (``None``: the model's convention) and
    ``pretrained`` weights for the backbone (``True``: the published ones of timm and
    torchvision backbones, or a state dict / safetensors file; the branches start fresh)."""

    name: str = "small-cnn"
    positions: list[str] | None = None
    layouts: list[str] | None = None
    bn_momentum: float | None = None
    pretrained: bool | str | None = None


@dataclass(frozen=True)
class GroupingArgs:
    """What the branches predict. ``source``: ``None`` (a baseline), a groupings file (ssal
    JSON, or one grouping in the authors' text format), a list of files (the authors' three,
    one per branch), a built-in hierarchy (``cifar100-superclasses``), ``auto`` or, from
    Python, ``Grouping`` objects. ``auto``: before the SSAL model trains, the network without
    branches trains for ``probe_epochs`` and its confusion on the held-out split is grouped into
    ``auto_groups`` (default: the model's paper sizes) with ``auto_mode``. With fewer groupings
    than the model has branch positions, the deepest positions are used."""

    source: str | list[str] | list[Grouping] | None = None
    auto_groups: list[int] | None = None
    auto_mode: Literal["similar", "split"] = "similar"
    probe_epochs: int = 5

    @property
    def auto(self) -> bool:
        """The groupings come from a probe trained before the SSAL model."""
        return isinstance(self.source, str) and self.source == "auto"

    @property
    def given(self) -> list[Grouping] | None:
        """The ``Grouping`` objects passed from Python, if ``source`` holds them."""
        items = self.source if isinstance(self.source, (list, tuple)) else []
        if items and all(isinstance(g, Grouping) for g in items):
            return list(items)
        return None


@dataclass(frozen=True)
class LossArgs:
    """The SSAL loss: the weight of each branch (``None``: the model's), label smoothing and
    its convention (``torch``'s, or the ``paper``'s)."""

    branch_weights: list[float] | None = None
    label_smoothing: float = 0.0
    smoothing_convention: Literal["torch", "paper"] = "torch"


@dataclass(frozen=True)
class OptimArgs:
    """SGD and its schedule. ``weight_decay``/``branch_weight_decay`` are PyTorch values (a
    Keras ``l2(wd)`` is ``2 * wd``) on conv and linear weights; norm layers and biases get none
    unless ``decay_norm_and_bias``; ``weight_decay_by_kind`` sets any kind of parameter's value
    (``ssal.recipe.DECAY_KINDS``, e.g. ``backbone.linear.bias``). ``backbone_lr_factor`` scales
    the backbone's learning rate against the branches' (fine-tuning: e.g. 0.1). The learning
    rate warms up over ``warmup_epochs`` and decays linearly, stepped per
    ``schedule_interval``; ``schedule_first_epoch`` is the number the schedule gives the first
    epoch (0, as Keras counts; 1, as the authors' PyTorch trainer)."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    branch_weight_decay: float | None = None
    decay_norm_and_bias: bool = False
    weight_decay_by_kind: dict[str, float] | None = None
    backbone_lr_factor: float = 1.0
    warmup_epochs: int = 10
    schedule_interval: Literal["epoch", "step"] = "epoch"
    schedule_first_epoch: int = 0


@dataclass(frozen=True)
class SpeedArgs:
    """Fast-path switches, which change no result: ``torch.compile`` (with its ``mode``) and
    the channels-last memory format; ``None`` turns each on for CUDA devices only."""

    compile: bool | None = None
    compile_mode: str | None = None
    channels_last: bool | None = None


GROUPS: dict[str, type] = {
    "network": NetworkArgs,
    "groupings": GroupingArgs,
    "loss": LossArgs,
    "optim": OptimArgs,
    "speed": SpeedArgs,
}
"""``SSALModule``'s grouped arguments and their dataclasses."""

RENAMED_KEYS: dict[str, str] = {
    "model.model": "model.network.name",
    **{f"model.{f}": f"model.network.{f}" for f in ("positions", "layouts", "bn_momentum")},
    "model.pretrained": "model.network.pretrained",
    "model.groupings": "model.groupings.source",
    **{f"model.{f}": f"model.groupings.{f}" for f in ("auto_groups", "auto_mode", "probe_epochs")},
    **{f"model.{f.name}": f"model.loss.{f.name}" for f in fields(LossArgs)},
    **{f"model.{f.name}": f"model.optim.{f.name}" for f in fields(OptimArgs)},
    **{f"model.{f.name}": f"model.speed.{f.name}" for f in fields(SpeedArgs)},
}
"""The flat ``model:`` keys of ssal before 0.3 and the keys that replaced them."""


def renamed_key(key: str) -> str | None:
    """The key that replaced an old flat one (``model.lr`` -> ``model.optim.lr``), or ``None``.

    ``key`` may carry LightningCLI's ``init_args`` (``model.init_args.lr``); the key
    ``model.groupings`` now names a group, so it counts as old only where it was given a
    value of its own (the caller knows)."""
    plain = key.replace(".init_args.", ".")
    return RENAMED_KEYS.get(plain)


Args = TypeVar("Args")


def coerce(cls: type[Args], value: Args | Mapping[str, Any] | None) -> Args:
    """``value`` as ``cls``: itself, ``cls()`` for ``None``, or built from a mapping (a YAML
    section, a checkpoint's hyperparameters); ``ValueError`` naming unknown fields."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise UserError(f"expected {cls.__name__} or a mapping, got {value!r}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - known)
    if unknown:
        raise UserError(f"{cls.__name__} has no field {', '.join(unknown)}")
    return cls(**value)


def as_plain(args: Any) -> dict[str, Any]:
    """One group as plain values. ``Grouping`` objects given from Python are left out
    (``source: None``): the checkpoint's ``ssal`` section holds the groupings themselves."""
    if isinstance(args, GroupingArgs) and args.given is not None:
        args = replace(args, source=None)
    return asdict(args)


def grouped_args(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat recipe (``{"lr": 0.05, "channels_last": True}``, as a registry entry holds it)
    as ``SSALModule``'s keyword arguments (``optim=OptimArgs(lr=0.05)``, ...)."""
    values: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in flat.items():
        new = RENAMED_KEYS.get(f"model.{key}")
        if new is None:
            top[key] = value  # num_classes, in_channels, alpha
            continue
        _, group, field = new.split(".")
        values.setdefault(group, {})[field] = value
    return {**top, **{g: GROUPS[g](**v) for g, v in values.items()}}


def flat_keys(groups: Sequence[str] = tuple(GROUPS)) -> list[str]:
    """Every ``model.GROUP.FIELD`` key of the groups (for the config error's "did you mean")."""
    return [f"model.{g}.{f.name}" for g in groups for f in fields(GROUPS[g])]
