"""What a hooked module gives, turned into what a branch reads: one conversion, in one place.

A branch position is a string, as stored in checkpoints and configs:
``MODULE[:input][:FORMAT]``. ``MODULE`` is the dotted name of a backbone module; ``:input``
reads the module's input instead of its output; ``FORMAT`` says how the tensor is laid out:

- ``nchw``: ``(N, C, H, W)`` feature maps (PyTorch's convolutions);
- ``nhwc``: ``(N, H, W, C)``, channels last (timm's Swin, MambaOut and every model whose
  ``output_fmt`` is ``"NHWC"``; torchvision's Swin);
- ``tokens``: ``(N, L, C)`` token sequences whose first tokens are prefix tokens (class,
  distillation, register tokens: the backbone's ``num_prefix_tokens``, torchvision ViT's class
  token) and whose others are the patch grid, row by row; ``tokens+K`` gives the number of
  prefix tokens ``K`` for a backbone that does not say it.

Without a format the backbone decides: a 3-D output is tokens where the backbone says how many
prefix tokens it has; a 4-D output is NCHW unless the backbone marks itself channels-last
(``output_fmt = "NHWC"``, torchvision's Swin), and then it is read by its channel counts
(``feature_info``) where they tell, else refused with one line naming the position, the shape
and the suffix that settles it. A backbone with no mark at all is read NCHW, PyTorch's
convention, as every convolutional network is.

Branches read one of two forms: the grid ``(N, C, H, W)`` (the convolutional layouts) or the
tokens ``(N, L, C)`` with the prefix tokens first (layouts that start with a token block);
``FeatureRead.read`` gives either from any source format, once, where the branch reads it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ssal.errors import UserError

__all__ = [
    "FORMATS",
    "FeatureRead",
    "Position",
    "backbone_format",
    "backbone_prefix_tokens",
    "parse_position",
    "settle_read",
]

FORMATS = ("nchw", "nhwc", "tokens")
_TOKENS = re.compile(r"tokens(?:\+(\d+))?\Z")


@dataclass(frozen=True)
class Position:
    """A parsed position: the module's name, whether its input is read, the tensor's format
    (``None``: the backbone decides) and, for tokens, the number of prefix tokens (``None``:
    the backbone's)."""

    module: str
    use_input: bool = False
    fmt: str | None = None
    prefix: int | None = None

    def __str__(self) -> str:
        text = self.module + (":input" if self.use_input else "")
        if self.fmt is not None:
            text += ":" + self.fmt
            if self.prefix is not None:
                text += f"+{self.prefix}"
        return text


def parse_position(text: str) -> Position:
    """``"blocks.3:tokens"`` -> ``Position("blocks.3", False, "tokens")``; unknown suffixes
    raise ``ValueError`` naming the position and the suffixes there are."""
    if not isinstance(text, str) or not text.split(":", 1)[0]:
        raise UserError(f"a branch position must be a module name, got {text!r}")
    module, *suffixes = text.split(":")
    use_input, fmt, prefix = False, None, None
    for i, suffix in enumerate(suffixes):
        tokens = _TOKENS.match(suffix)
        if suffix == "input" and i == 0:
            use_input = True
        elif fmt is None and i == len(suffixes) - 1 and (suffix in FORMATS or tokens):
            fmt = "tokens" if tokens else suffix
            prefix = int(tokens.group(1)) if tokens and tokens.group(1) else None
        else:
            raise UserError(
                f"branch position {text!r}: unknown suffix {suffix!r}; a position is "
                "MODULE[:input][:nchw|:nhwc|:tokens|:tokens+K]"
            )
    return Position(module, use_input, fmt, prefix)


def backbone_format(backbone: nn.Module) -> str | None:
    """``"nhwc"`` or ``"nchw"`` where the backbone says how its feature maps are laid out
    (timm's ``output_fmt``; torchvision's Swin is channels-last), else ``None``."""
    fmt = getattr(backbone, "output_fmt", None)
    if isinstance(fmt, str) and fmt.lower() in ("nchw", "nhwc"):
        return fmt.lower()
    if type(backbone).__module__.startswith("torchvision.") and "Swin" in type(backbone).__name__:
        return "nhwc"
    return None


def backbone_prefix_tokens(backbone: nn.Module) -> int | None:
    """How many prefix tokens the backbone's token sequences start with (timm's
    ``num_prefix_tokens``; torchvision's ViT has its class token), else ``None``."""
    n = getattr(backbone, "num_prefix_tokens", None)
    if isinstance(n, int) and n >= 0:
        return n
    if type(backbone).__module__.startswith("torchvision.") and hasattr(backbone, "class_token"):
        return 1
    return None


def _stage_channels(backbone: nn.Module) -> set[int]:
    info = getattr(backbone, "feature_info", None)
    try:
        return {int(f["num_chs"]) for f in info}  # type: ignore[union-attr]
    except (TypeError, KeyError, ValueError):
        return set()


@dataclass(frozen=True)
class FeatureRead:
    """How one branch reads its position's tensor: the source ``fmt``, the prefix tokens and
    the patch grid of a token source, the channels, and whether the branch wants tokens.

    Plain values (a frozen dataclass): models that hold it copy, pickle and compile."""

    position: str
    fmt: str
    channels: int
    prefix: int = 0
    grid: tuple[int, int] = (0, 0)
    tokens: bool = False

    def read(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as the branch reads it: ``(N, C, H, W)``, or ``(N, L, C)`` with the prefix
        tokens first where the branch wants tokens."""
        if self.fmt == "tokens":
            if self.tokens:
                return t
            h, w = self.grid
            patches = t[:, self.prefix :, :]
            return patches.transpose(1, 2).reshape(t.shape[0], self.channels, h, w)
        if self.tokens:  # a feature map as a sequence of tokens, no prefix
            return t.flatten(1, 2) if self.fmt == "nhwc" else t.flatten(2).transpose(1, 2)
        return t.permute(0, 3, 1, 2) if self.fmt == "nhwc" else t


def _grid(n: int, image_hw: Sequence[int]) -> tuple[int, int] | None:
    """The ``(h, w)`` patch grid of ``n`` patches over an image of ``image_hw`` pixels."""
    height, width = int(image_hw[0]), int(image_hw[1])
    for h in range(1, n + 1):
        if n % h == 0 and math.isclose(h / (n // h), height / width, rel_tol=0.05):
            return h, n // h
    return None


def _map_format(backbone: nn.Module, pos: Position, shape: tuple[int, ...]) -> str:
    """NCHW or NHWC for a 4-D tensor at a position without a format suffix."""
    said = backbone_format(backbone)
    if said != "nhwc":
        return "nchw"
    stages = _stage_channels(backbone)
    if stages and (shape[-1] in stages) != (shape[1] in stages):
        return "nhwc" if shape[-1] in stages else "nchw"
    raise UserError(
        f"branch at {str(pos)!r} sees a tensor of shape {shape} in a channels-last backbone "
        f"and its layout cannot be told; give it as {pos.module}:nhwc or {pos.module}:nchw"
    )


def settle_read(
    backbone: nn.Module,
    position: str,
    shape: Sequence[int],
    image_hw: Sequence[int],
    tokens: bool = False,
) -> FeatureRead:
    """How the branch at ``position`` reads a tensor of ``shape`` (seen on an image of
    ``image_hw`` pixels); ``tokens``: the branch wants tokens. Tensors that cannot be read as
    feature maps raise ``ValueError``: one line naming the position, the shape and the
    option that settles it."""
    pos, shape = parse_position(position), tuple(int(s) for s in shape)
    fmt = pos.fmt
    if fmt is None and len(shape) == 3 and backbone_prefix_tokens(backbone) is not None:
        fmt = "tokens"
    if fmt is None and len(shape) == 4:
        fmt = _map_format(backbone, pos, shape)
    want = 3 if fmt == "tokens" else 4
    if fmt is None or len(shape) != want:
        expected = {"tokens": "(N, L, C) tokens", "nhwc": "(N, H, W, C) feature maps"}
        raise UserError(
            f"branch at {position!r} sees a tensor of shape {shape}; SSAL branches read "
            f"{expected.get(fmt or '', '(N, C, H, W) feature maps')}: give a position whose "
            "output is one, or its layout as a suffix (:nchw, :nhwc, :tokens, :tokens+K)"
        )
    if fmt != "tokens":
        channels = shape[3] if fmt == "nhwc" else shape[1]
        return FeatureRead(position, fmt, channels, tokens=tokens)
    prefix = pos.prefix if pos.prefix is not None else backbone_prefix_tokens(backbone)
    if prefix is None:
        raise UserError(
            f"branch at {position!r} reads tokens of shape {shape} from a backbone that does "
            f"not say how many prefix tokens they start with; give {pos.module}:tokens+K"
        )
    grid = _grid(shape[1] - prefix, image_hw) if shape[1] > prefix else None
    if grid is None:
        raise UserError(
            f"branch at {position!r}: {shape[1]} tokens less {prefix} prefix token(s) are no "
            f"patch grid of a {image_hw[0]} x {image_hw[1]} image; give the number of prefix "
            f"tokens as {pos.module}:tokens+K"
        )
    return FeatureRead(position, "tokens", shape[2], prefix, grid, tokens)
