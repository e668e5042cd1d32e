"""The branch layout language: ``"cbr(128,5,2) cbr(128,3) inception gap"`` -> ``nn.Module``.

Blocks (arguments in brackets, defaults after ``=``):

- ``cbr(f=256, k=3, s=1)``: conv f filters k x k stride s, "same" padding, batch norm, ReLU.
- ``inception(w=1, m=1, s=0)``: the paper's CIFAR branch block, four paths concatenated to
  748 channels; widths scaled by ``w``, each path rounded up to a multiple of ``m``; ``s=1``
  runs the three 1x1 convolutions on the block's input as one (the same function).
- ``inception_c(w=0.5)``, ``inception_d(w=0.5)``, ``inception_e(w=1)``: the reduced
  Inception-v3 blocks of type C, D (grid reduction) and E of the authors' ImageNet branches,
  every width scaled by ``w`` (256, 256 and 748 channels out at the defaults).
- ``gap``: global average pool to a vector.
- ``dense(n)``: fully connected n units + ReLU (needs ``gap`` before it).
- ``dropout(p)``: dropout with probability p.

Input channels are given when the branch is built (the model infers them from the backbone);
every branch ends in a linear layer to its number of groups, and gets a ``gap`` first when the
layout leaves the features spatial.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Block", "build_branch", "parse_layout", "BLOCKS"]


@dataclass(frozen=True)
class Block:
    """One parsed block of a layout: its name and numeric arguments."""

    name: str
    args: tuple[float, ...] = ()

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({','.join(f'{a:g}' for a in self.args)})"


def cbr(c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1) -> nn.Sequential:
    """Conv ("same" padding, no bias: batch norm follows) + batch norm + ReLU."""
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = (k[0] // 2, k[1] // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Concat(nn.Module):
    """Run parallel paths on the same input and concatenate their channels."""

    def __init__(self, *paths: nn.Module) -> None:
        super().__init__()
        self.paths = nn.ModuleList(paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.paths], dim=1)


class _Then(nn.Module):
    """A stem followed by parallel paths whose outputs are concatenated."""

    def __init__(self, stem: nn.Module, *paths: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.split = _Concat(*paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.split(self.stem(x))


def _asym(c_in: int, c: int) -> tuple[nn.Module, nn.Module]:
    """The two parallel paths 1x3 and 3x1, each c channels."""
    return cbr(c_in, c, (1, 3)), cbr(c_in, c, (3, 1))


class _InceptionOneStem(nn.Module):
    """The CIFAR inception block with its three 1x1 convolutions that read the block's input
    (128, 128 and 160 filters) run as one of 416 filters, then split: the same function with
    the same parameters (batch norm is per channel), in fewer and larger kernels."""

    def __init__(self, c_in: int, c128: int, c160: int, c108: int) -> None:
        super().__init__()
        self.sizes = [c128, c128, c160]
        self.stems = cbr(c_in, 2 * c128 + c160, 1)
        self.asym2 = _Concat(*_asym(c128, c128))
        self.reduce3 = cbr(c160, c128, 1)
        self.asym3 = _Concat(*_asym(c128, c128))
        self.pool = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), cbr(c_in, c108, (3, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.stems(x).split(self.sizes, dim=1)
        return torch.cat([a, self.asym2(b), self.asym3(self.reduce3(c)), self.pool(x)], dim=1)


def inception_cifar(
    c_in: int, width: float = 1, multiple: float = 1, one_stem: float = 0
) -> tuple[nn.Module, int]:
    """The paper's CIFAR branch block: 128 + 256 + 256 + 108 = 748 channels out.

    ``width`` scales every path (branches in proportion to a narrower backbone); each path's
    channels are then rounded up to a multiple of ``multiple`` (tensor cores want multiples
    of 8: ``inception(1,8)`` gives 128 + 256 + 256 + 112 = 752 channels, ``inception(1,32)``
    768). ``one_stem`` 1 runs the three 1x1 convolutions on the input as one
    (``_InceptionOneStem``: same function and parameters, other names in the state dict).
    The defaults build the paper's block exactly.
    """
    m = int(multiple)
    if one_stem not in (0, 1):
        raise ValueError(
            f"inception's third argument is 1 (one stem) or left out, got {one_stem:g}"
        )

    def size(n: int) -> int:  # round() first: 0.4 * 160 is 64.00000000000001
        return max(m, math.ceil(round(width * n / m, 6)) * m)

    c128, c160, c108 = size(128), size(160), size(108)
    if one_stem:
        return _InceptionOneStem(c_in, c128, c160, c108), 5 * c128 + c108
    block = _Concat(
        cbr(c_in, c128, 1),
        _Then(cbr(c_in, c128, 1), *_asym(c128, c128)),
        _Then(nn.Sequential(cbr(c_in, c160, 1), cbr(c160, c128, 1)), *_asym(c128, c128)),
        nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), cbr(c_in, c108, (3, 1))
        ),
    )
    return block, 5 * c128 + c108


def _w(width: float, channels: int) -> int:
    return max(1, int(round(width * channels)))


def inception_c(c_in: int, width: float = 0.5) -> tuple[nn.Module, int]:
    """Reduced Inception-v3 type C (factorised 7x7) of the authors' ImageNet branches.

    Widths 128/160 scaled by ``width``; ``4 * 128 * width`` channels out (256 at 0.5).
    """
    c128, c160 = _w(width, 128), _w(width, 160)
    block = _Concat(
        cbr(c_in, c128, 1),
        nn.Sequential(cbr(c_in, c160, 1), cbr(c160, c160, (1, 7)), cbr(c160, c128, (7, 1))),
        nn.Sequential(
            cbr(c_in, c160, 1),
            cbr(c160, c160, (7, 1)),
            cbr(c160, c160, (1, 7)),
            cbr(c160, c160, (7, 1)),
            cbr(c160, c128, (1, 7)),
        ),
        nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), cbr(c_in, c128, 1)),
    )
    return block, 4 * c128


def inception_d(c_in: int, width: float = 0.5) -> tuple[nn.Module, int]:
    """Reduced Inception-v3 type D: halves the resolution; 512 * ``width`` channels out."""
    c192, c216, c168, c128 = (_w(width, n) for n in (192, 216, 168, 128))
    block = _Concat(
        nn.Sequential(cbr(c_in, c192, 1), cbr(c192, c216, 3, stride=2)),
        nn.Sequential(
            cbr(c_in, c192, 1),
            cbr(c192, c192, (1, 7)),
            cbr(c192, c192, (7, 1)),
            cbr(c192, c168, 3, stride=2),
        ),
        nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), cbr(c_in, c128, 1)),
    )
    return block, c216 + c168 + c128


def inception_e(c_in: int, width: float = 1.0) -> tuple[nn.Module, int]:
    """Reduced Inception-v3 type E (expanded filter bank); 748 * ``width`` channels out."""
    c128, c160, c108 = (_w(width, n) for n in (128, 160, 108))
    block = _Concat(
        cbr(c_in, c128, 1),
        _Then(cbr(c_in, c128, 1), *_asym(c128, c128)),
        _Then(nn.Sequential(cbr(c_in, c160, 1), cbr(c160, c128, 3)), *_asym(c128, c128)),
        nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), cbr(c_in, c108, 1)),
    )
    return block, 5 * c128 + c108


def _cbr_block(c_in: int, f: float = 256, k: float = 3, s: float = 1) -> tuple[nn.Module, int]:
    return cbr(c_in, int(f), int(k), int(s)), int(f)


def _gap(c_in: int) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), c_in


def _dense(c_in: int, n: float) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Linear(c_in, int(n)), nn.ReLU(inplace=True)), int(n)


def _dropout(c_in: int, p: float) -> tuple[nn.Module, int]:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p:g}")
    return nn.Dropout(p), c_in


# name -> (builder(c_in, *args) -> (module, c_out), integer argument positions, min args, max
# args, whether the block needs a spatial (N, C, H, W) input)
BLOCKS: dict[str, tuple[Callable[..., tuple[nn.Module, int]], tuple[int, ...], int, int, bool]] = {
    "cbr": (_cbr_block, (0, 1, 2), 0, 3, True),
    "inception": (inception_cifar, (1, 2), 0, 3, True),
    "inception_c": (inception_c, (), 0, 1, True),
    "inception_d": (inception_d, (), 0, 1, True),
    "inception_e": (inception_e, (), 0, 1, True),
    "gap": (_gap, (), 0, 0, True),
    "dense": (_dense, (0,), 1, 1, False),
    "dropout": (_dropout, (), 1, 1, False),
}

_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^()]*)\))?\s*")


def parse_layout(text: str | Sequence[str]) -> list[Block]:
    """Parse a layout string into blocks; unknown blocks or bad arguments raise ``ValueError``."""
    if not isinstance(text, str):
        text = " ".join(text)
    blocks, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"layout {text!r}: cannot read from position {pos}: {text[pos:]!r}")
        name, raw = m.group(1), m.group(2)
        pos = m.end()
        if name not in BLOCKS:
            raise ValueError(f"layout {text!r}: unknown block {name!r}; known: {', '.join(BLOCKS)}")
        _, ints, lo, hi, _ = BLOCKS[name]
        args: list[float] = []
        for part in [p.strip() for p in raw.split(",")] if raw and raw.strip() else []:
            try:
                args.append(float(part))
            except ValueError:
                raise ValueError(
                    f"layout {text!r}: {name} argument {part!r} is not a number"
                ) from None
        if not lo <= len(args) <= hi:
            raise ValueError(
                f"layout {text!r}: {name} takes {lo} to {hi} arguments, got {len(args)}"
            )
        for i, a in enumerate(args):
            if a <= 0 and name != "dropout":
                raise ValueError(f"layout {text!r}: {name} arguments must be positive, got {a:g}")
            if i in ints and a != int(a):
                raise ValueError(f"layout {text!r}: {name} argument {a:g} must be an integer")
        blocks.append(Block(name, tuple(args)))
    return blocks


def build_branch(layout: str | Sequence[Block], in_channels: int, num_groups: int) -> nn.Sequential:
    """Build a branch: the layout's blocks, a ``gap`` if still spatial, a linear to the groups.

    Input ``(N, in_channels, H, W)``; output logits ``(N, num_groups)``.
    """
    blocks = parse_layout(layout) if isinstance(layout, str) else list(layout)
    if in_channels < 1 or num_groups < 1:
        raise ValueError(
            f"branch needs positive channels and groups, got {in_channels}, {num_groups}"
        )
    layers: list[nn.Module] = []
    c, spatial = in_channels, True
    for block in blocks:
        builder, _, _, _, needs_spatial = BLOCKS[block.name]
        if needs_spatial and not spatial:
            raise ValueError(f"block {block} needs a feature map, but it comes after gap")
        if block.name == "dense" and spatial:
            raise ValueError(f"block {block} needs a vector: put gap before it")
        module, c = builder(c, *block.args)
        layers.append(module)
        spatial = spatial and block.name != "gap"
    if spatial:
        module, c = _gap(c)
        layers.append(module)
    layers.append(nn.Linear(c, num_groups))
    return nn.Sequential(*layers)
