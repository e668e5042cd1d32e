"""The model card: one typed description of a trained SSAL model, from training to prediction.

A ``ModelCard`` says what a checkpoint's weights are (model name, classes, input size, branch
positions and layouts, groupings), how to use them (alpha, class names, ``Preprocessing``)
and where they came from (the data they were trained on, the checkpoint, epoch and step).
Checkpoints hold ``card.to_dict()`` under ``"ssal"``; exports hold it as ``ssal.json``;
``ModelCard.from_dict`` is the one reader of that dict and checks every value (types, sizes,
counts) before anything is built, so everything past it reads typed fields. ``card.build()``
makes the (untrained) network the card describes. This module knows nothing of Lightning.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ssal.data.transforms import eval_resize, resize_for_model
from ssal.errors import UserError
from ssal.files import squeeze
from ssal.grouping import Grouping
from ssal.model import SSALModel

__all__ = ["MAX_INPUT_SIDE", "SCHEMA_VERSION", "ModelCard", "Preprocessing"]

SCHEMA_VERSION = 4
"""The card's schema. 4: the typed card (``in_channels`` and ``normalization`` gone,
``preprocessing`` always complete). Nothing older was released; older cards are refused."""

MAX_INPUT_SIDE = 4096
"""Largest image side a card may ask inputs to be resized or cropped to."""


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _ints(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input: normalised with ``mean``/``std`` (per channel,
    [0, 1] scale) after ``resize`` (the short side, in pixels) and a centre ``crop`` ``(H, W)``;
    with ``resize`` ``None`` an image is resized to the model's input size (``crop`` unused).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    crop: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        if self.resize is not None:
            object.__setattr__(self, "resize", int(self.resize))
        if self.crop is not None:
            object.__setattr__(self, "crop", _ints(self.crop))

    @classmethod
    def plain(cls, channels: int) -> Preprocessing:
        """No normalisation (mean 0, std 1), images resized to the model's input size."""
        return cls((0.0,) * channels, (1.0,) * channels)

    @classmethod
    def for_eval(
        cls, mean: Sequence[float], std: Sequence[float], crop_size: int | None = None
    ) -> Preprocessing:
        """What a datamodule's evaluation does: normalisation and, for image folders
        (``crop_size``), a resize to ``crop_size / 0.875`` and a centre crop of ``crop_size``."""
        if not crop_size:
            return cls(mean, std)
        return cls(mean, std, eval_resize(crop_size), (crop_size, crop_size))

    def resize_image(self, img: Any, size: Sequence[int]) -> Any:
        """A PIL image or ``(C, H, W)`` tensor resized (and cropped) for a model whose input
        is ``size = (H, W)``."""
        return resize_for_model(img, (int(size[0]), int(size[1])), self.resize, self.crop)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "crop": list(self.crop) if self.crop is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Any, channels: int) -> Preprocessing:
        """Read ``to_dict``'s values for a model of ``channels`` input channels;
        ``ValueError`` saying what is wrong."""
        if not isinstance(d, dict):
            raise UserError("preprocessing must be a mapping")
        for key in ("mean", "std"):
            if not _numbers(d.get(key), channels):
                raise UserError(f"preprocessing {key} must hold {channels} numbers")
        if min(d["std"]) <= 0:
            raise UserError("preprocessing std must be positive")
        resize, crop = d.get("resize"), d.get("crop")
        if resize is not None and not _is_int(resize, 1, MAX_INPUT_SIDE):
            raise UserError(f"preprocessing resize must be a side of 1..{MAX_INPUT_SIDE} pixels")
        if crop is not None and not (
            isinstance(crop, list) and len(crop) == 2 and all(_is_sides(crop))
        ):
            raise UserError(f"preprocessing crop must be [H, W] of 1..{MAX_INPUT_SIDE} pixels")
        return cls(d["mean"], d["std"], resize, crop)


@dataclass(frozen=True)
class ModelCard:
    """A trained SSAL model, described (frozen; sequences are tuples, ``data`` read-only).

    ``input_size``: ``(C, H, W)`` of the images the model was trained on (inference and ONNX
    exports feed that size); ``groupings``: one per branch, deepest last; ``alpha``: the +JP
    combination factor, ``alpha_chosen_on`` where it was tuned (``None``: the recipe's);
    ``data``: the datamodule's ``class_path`` and ``init_args`` (rebuilds the splits);
    ``checkpoint``: the checkpoint file the card was read from (an export: exported from);
    ``onnx_heads``: an ONNX export's output names. Cards compare equal field by field, and
    ``ModelCard.from_dict(card.to_dict(), ...) == card``.
    """

    model: str
    num_classes: int
    input_size: tuple[int, int, int]
    preprocessing: Preprocessing
    positions: tuple[str, ...] = ()
    layouts: tuple[str, ...] = ()
    groupings: tuple[Grouping, ...] = ()
    branch_weights: tuple[float, ...] = ()
    alpha: float = 0.0
    alpha_chosen_on: str | None = None
    class_names: tuple[str, ...] | None = None
    data: Mapping[str, Any] | None = None
    checkpoint: str | None = None
    epoch: int | None = None
    global_step: int | None = None
    onnx_heads: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("num_classes", int(self.num_classes))
        set_("input_size", _ints(self.input_size))
        set_("positions", tuple(str(p) for p in self.positions))
        set_("layouts", tuple(str(p) for p in self.layouts))
        set_("groupings", tuple(self.groupings))
        set_("branch_weights", _floats(self.branch_weights))
        set_("alpha", float(self.alpha))
        if self.class_names is not None:
            set_("class_names", tuple(str(c) for c in self.class_names))
        if self.data is not None:
            set_("data", MappingProxyType(copy.deepcopy(dict(self.data))))
        if self.onnx_heads is not None:
            set_("onnx_heads", tuple(self.onnx_heads))
        problem = self._problem()
        if problem:
            raise UserError(problem)

    def _problem(self) -> str | None:
        """What makes the card's values disagree with each other, or None."""
        if len(self.input_size) != 3 or len(self.preprocessing.mean) != self.input_size[0]:
            return "input_size must be (C, H, W) and preprocessing hold C means and stds"
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            return f"class_names must list the {self.num_classes} classes' names"
        for g in self.groupings:
            if g.num_classes != self.num_classes:
                return (
                    f"grouping {g.name!r} covers {g.num_classes} classes, the model "
                    f"{self.num_classes}"
                )
        return None

    @classmethod
    def of(
        cls,
        net: SSALModel,
        model: str,
        num_classes: int,
        preprocessing: Preprocessing | None = None,
        input_size: Sequence[int] | None = None,
        **fields: Any,
    ) -> ModelCard:
        """The card of ``net``, built as the registry's ``model``: its branch positions,
        layouts and groupings; ``input_size`` defaults to the network's and ``preprocessing``
        to none (``Preprocessing.plain``); ``fields``: the card's other values (alpha,
        branch weights, class names, data ...)."""
        size = tuple(input_size or net.input_size)
        return cls(
            model=model,
            num_classes=num_classes,
            input_size=size,  # type: ignore[arg-type]
            preprocessing=preprocessing or Preprocessing.plain(int(size[0])),
            positions=tuple(net.positions),
            layouts=tuple(net.layouts),
            groupings=tuple(net.groupings),
            **fields,
        )

    @property
    def in_channels(self) -> int:
        """Channels of the model's input images."""
        return self.input_size[0]

    @property
    def names(self) -> tuple[str, ...]:
        """The class names, or the class numbers as text where the card has none."""
        if self.class_names is not None:
            return self.class_names
        return tuple(str(c) for c in range(self.num_classes))

    def data_config(self) -> dict[str, Any] | None:
        """``data`` as a plain dict of its own (a copy: changing it leaves the card alone)."""
        return copy.deepcopy(dict(self.data)) if self.data is not None else None

    def build(self) -> SSALModel:
        """The untrained network the card describes (its weights load into it)."""
        from ssal.backbones import create_model

        model = create_model(
            self.model,
            self.num_classes,
            list(self.groupings) or None,
            in_channels=self.in_channels,
            positions=list(self.positions) or None,
            layouts=list(self.layouts) or None,
            # a backbone built for one size (ViT, Swin) is built for the size it trained at
            image_size=self.input_size[1] if self.input_size[1] == self.input_size[2] else None,
        )
        model.input_size = self.input_size  # the size it trained at
        return model

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON values (what checkpoints and ``ssal.json`` hold)."""
        return {
            "schema": SCHEMA_VERSION,
            "model": self.model,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "positions": list(self.positions),
            "layouts": list(self.layouts),
            "groupings": [g.to_dict() for g in self.groupings],
            "branch_weights": list(self.branch_weights),
            "alpha": self.alpha,
            "alpha_chosen_on": self.alpha_chosen_on,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "preprocessing": self.preprocessing.to_dict(),
            "data": self.data_config(),
            "checkpoint": self.checkpoint,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "onnx_heads": list(self.onnx_heads) if self.onnx_heads is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Any, source: Any) -> ModelCard:
        """Read ``to_dict``'s values, checking each (types, sizes up to ``MAX_INPUT_SIDE``,
        counts) before anything is built: a ``ValueError`` of one line naming ``source``
        (the file it came from) and the problem."""
        try:
            return _read(d)
        except ValueError as e:
            raise UserError(f"{source}: the model card is unusable ({e})") from None


# ------------------------------------------------------------------------------ reading


def _is_int(v: Any, low: int = 1, high: int | None = None) -> bool:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
    return ok and (high is None or v <= high)


def _is_sides(values: Sequence[Any]) -> list[bool]:
    return [_is_int(v, 1, MAX_INPUT_SIDE) for v in values]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: Any, n: int | None = None) -> bool:
    return isinstance(v, list) and (n is None or len(v) == n) and all(_is_number(x) for x in v)


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_json(v: Any) -> bool:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _optional(d: dict[str, Any], key: str, ok: Callable[[Any], bool], what: str) -> Any:
    value = d.get(key)
    if value is not None and not ok(value):
        raise UserError(f"{key} must be {what}")
    return value


def _schema(d: dict[str, Any]) -> None:
    schema = d.get("schema", 1)
    if schema == SCHEMA_VERSION:
        return
    if _is_int(schema) and schema > SCHEMA_VERSION:
        raise UserError(f"schema {schema} is newer than this ssal's {SCHEMA_VERSION}; upgrade ssal")
    raise UserError(f"schema {schema!r} is older than this ssal's {SCHEMA_VERSION}; train it again")


def _groupings(value: Any, num_classes: int) -> tuple[Grouping, ...]:
    if not isinstance(value, list) or not all(
        isinstance(g, dict) and isinstance(g.get("assignment"), list) for g in value
    ):
        raise UserError("groupings must be a list of groupings")
    out = []
    for g in value:
        if len(g["assignment"]) != num_classes:
            raise UserError(
                f"grouping {g.get('name', '')!r} covers {len(g['assignment'])} classes, the "
                f"model {num_classes}"
            )
        try:
            out.append(Grouping.from_dict(g))
        except (TypeError, ValueError, OverflowError) as e:
            raise UserError(squeeze(e)) from None
    return tuple(out)


def _read(d: Any) -> ModelCard:
    """``ModelCard.from_dict`` without the name of the file in its errors."""
    if not isinstance(d, dict):
        raise UserError("it is not a mapping")
    _schema(d)
    model, num_classes = d.get("model"), d.get("num_classes")
    if not isinstance(model, str) or not _is_int(num_classes):
        raise UserError("model must be a name and num_classes a positive count")
    size = d.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and _is_int(size[0], 1, 4)):
        raise UserError("input_size must be [C, H, W] with C of 1..4")
    if not all(_is_sides(size[1:])):
        raise UserError(f"input_size must be [C, H, W] with sides of 1..{MAX_INPUT_SIDE} pixels")
    if not (_strings(d.get("positions")) and _strings(d.get("layouts"))):
        raise UserError("positions and layouts must be lists of names")
    if not _numbers(d.get("branch_weights")):
        raise UserError("branch_weights must be a list of numbers")
    if not _is_number(d.get("alpha")):
        raise UserError("alpha must be a number")
    names = _optional(d, "class_names", _strings, "a list of names")
    if names is not None and len(names) != num_classes:
        raise UserError(f"class_names must list the {num_classes} classes' names")
    heads = _optional(d, "onnx_heads", _strings, "a list of names")
    return ModelCard(
        model=model,
        num_classes=num_classes,
        input_size=tuple(size),
        preprocessing=Preprocessing.from_dict(d.get("preprocessing"), size[0]),
        positions=tuple(d["positions"]),
        layouts=tuple(d["layouts"]),
        groupings=_groupings(d.get("groupings"), num_classes),
        branch_weights=tuple(d["branch_weights"]),
        alpha=d["alpha"],
        alpha_chosen_on=_optional(d, "alpha_chosen_on", lambda v: isinstance(v, str), "a name"),
        class_names=tuple(names) if names is not None else None,
        data=_optional(d, "data", lambda v: isinstance(v, dict) and _is_json(v), "plain data"),
        checkpoint=_optional(d, "checkpoint", lambda v: isinstance(v, str), "a path"),
        epoch=_optional(d, "epoch", lambda v: _is_int(v, 0), "a count"),
        global_step=_optional(d, "global_step", lambda v: _is_int(v, 0), "a count"),
        onnx_heads=tuple(heads) if heads is not None else None,
    )
