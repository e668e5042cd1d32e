"""The branch layout language: ``"cbr(128,5,2) cbr(128,3) inception gap"`` -> ``nn.Module``.

A layout may start with the name of a style and a colon (``"keras: cbr(128,5,2) ..."``): the
conventions its layers are made with (``ssal.conventions.Style``). Styles:

- ``torch`` (the default): PyTorch's defaults; convolutions without bias (batch norm follows),
  "same" padding of ``k // 2`` on every side.
- ``keras``: the layers of the authors' Keras branches (CIFAR): convolutions with biases,
  ``he_normal`` (truncated) initialisation and Keras' "same" padding, dense and output layers
  ``glorot_uniform``, biases zero, batch norm epsilon 1e-3 and momentum 0.01 (Keras' 0.99).
- ``inception-v3``: torchvision's Inception-v3 convention the authors' ImageNet branches use:
  convolutions without bias, batch norm epsilon 1e-3, PyTorch's initialisation.

Blocks (arguments in brackets, defaults after ``=``):

- ``cbr(f=256, k=3, s=1, p)``: conv f filters k x k stride s, batch norm, ReLU; padding p on
  every side, or "same" when p is left out.
- ``inception(w=1, m=1, s=0)``: the paper's CIFAR branch block, four paths concatenated to
  748 channels (its 3x3 average pool, as Keras', leaves the padding out of the average);
  widths scaled by ``w``, each path rounded up to a multiple of ``m``; ``s=1`` runs the three
  1x1 convolutions on the block's input as one (the same function).
- ``inception_c(w=0.5)``, ``inception_d(w=0.5)``, ``inception_e(w=1)``: the authors' reduced
  Inception-v3 blocks of type C, D (grid reduction) and E of their ImageNet branches, every
  width scaled by ``w`` (256, 256 and 748 channels out at the defaults). As theirs: D's
  stride-2 convolutions and max pool are unpadded (an n-pixel map becomes ``(n - 3) // 2 + 1``),
  C's and E's 3x3 average pools count the zero padding.
- ``gap``: global average pool to a vector (of tokens: the mean of the patch tokens).
- ``dense(n)``: fully connected n units + ReLU (needs ``gap`` before it).
- ``dropout(p)``: dropout with probability p.

Token blocks read ``(N, L, C)`` token sequences whose first tokens are the backbone's prefix
tokens (class, distillation, register tokens; ``ssal.features``). A layout that starts with
one reads tokens; the others read the patch grid as an ``(N, C, H, W)`` map:

- ``ln``: layer norm over the channels of every token.
- ``tblock(h=0, r=2)``: a pre-norm transformer block (h-head self-attention, an MLP r times
  as wide as the tokens, both residual); ``h=0``: one head per 64 channels.
- ``attnpool(h=0)``: attention pooling to a vector: a query (the class token where there is
  one, else the mean token, plus a learned offset) attends over every token with h heads,
  then layer norm.
- ``cls``: the first prefix token as the vector.

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

from ssal.conventions import KERAS_NORM, Norm, Style
from ssal.errors import UserError

__all__ = [
    "BLOCKS",
    "STYLES",
    "Block",
    "BlockKind",
    "build_branch",
    "parse_layout",
    "reads_tokens",
    "split_style",
]

STYLES: dict[str, Style] = {
    "torch": Style(),
    "keras": Style(
        norm=KERAS_NORM,
        conv_bias=True,
        same="tf",
        conv_init="he_normal",
        linear_init="glorot_uniform",
    ),
    "inception-v3": Style(norm=Norm(eps=1e-3)),
}
TORCH = STYLES["torch"]


@dataclass(frozen=True)
class Block:
    """One parsed block of a layout: its name and numeric arguments."""

    name: str
    args: tuple[float, ...] = ()

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({','.join(f'{a:g}' for a in self.args)})"


def cbr(
    c_in: int,
    c_out: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    padding: int | None = None,
    style: Style = TORCH,
) -> nn.Sequential:
    """Conv (``padding=None``: "same") + batch norm + ReLU, made in ``style``."""
    return nn.Sequential(
        style.conv(c_in, c_out, kernel, stride, padding), style.norm(c_out), nn.ReLU(inplace=True)
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


def _asym(style: Style, c_in: int, c: int) -> tuple[nn.Module, nn.Module]:
    """The two parallel paths 1x3 and 3x1, each c channels."""
    return cbr(c_in, c, (1, 3), style=style), cbr(c_in, c, (3, 1), style=style)


class _InceptionOneStem(nn.Module):
    """The CIFAR inception block with its three 1x1 convolutions that read the block's input
    (128, 128 and 160 filters) run as one of 416 filters, then split: the same function with
    the same parameters (batch norm is per channel), in fewer and larger kernels."""

    def __init__(self, style: Style, c_in: int, c128: int, c160: int, c108: int) -> None:
        super().__init__()
        self.sizes = [c128, c128, c160]
        self.stems = cbr(c_in, 2 * c128 + c160, 1, style=style)
        self.asym2 = _Concat(*_asym(style, c128, c128))
        self.reduce3 = cbr(c160, c128, 1, style=style)
        self.asym3 = _Concat(*_asym(style, c128, c128))
        self.pool = _inception_pool(style, c_in, c108)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.stems(x).split(self.sizes, dim=1)
        return torch.cat([a, self.asym2(b), self.asym3(self.reduce3(c)), self.pool(x)], dim=1)


def _inception_pool(style: Style, c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        cbr(c_in, c_out, (3, 1), style=style),
    )


def inception_cifar(
    style: Style, c_in: int, width: float = 1, multiple: float = 1, one_stem: float = 0
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
        raise UserError(f"inception's third argument is 1 (one stem) or left out, got {one_stem:g}")

    def size(n: int) -> int:  # round() first: 0.4 * 160 is 64.00000000000001
        return max(m, math.ceil(round(width * n / m, 6)) * m)

    c128, c160, c108 = size(128), size(160), size(108)
    if one_stem:
        return _InceptionOneStem(style, c_in, c128, c160, c108), 5 * c128 + c108
    block = _Concat(
        cbr(c_in, c128, 1, style=style),
        _Then(cbr(c_in, c128, 1, style=style), *_asym(style, c128, c128)),
        _Then(
            nn.Sequential(cbr(c_in, c160, 1, style=style), cbr(c160, c128, 1, style=style)),
            *_asym(style, c128, c128),
        ),
        _inception_pool(style, c_in, c108),
    )
    return block, 5 * c128 + c108


def _w(width: float, channels: int) -> int:
    return max(1, int(width * channels))


def inception_c(style: Style, c_in: int, width: float = 0.5) -> tuple[nn.Module, int]:
    """The authors' reduced Inception-v3 type C (factorised 7x7) of their ImageNet branches.

    Widths 128/160 scaled by ``width``; ``4 * 128 * width`` channels out (256 at 0.5).
    """
    c128, c160 = _w(width, 128), _w(width, 160)

    def conv(a: int, b: int, k: int | tuple[int, int]) -> nn.Sequential:
        return cbr(a, b, k, style=style)

    block = _Concat(
        conv(c_in, c128, 1),
        nn.Sequential(conv(c_in, c160, 1), conv(c160, c160, (1, 7)), conv(c160, c128, (7, 1))),
        nn.Sequential(
            conv(c_in, c160, 1),
            conv(c160, c160, (7, 1)),
            conv(c160, c160, (1, 7)),
            conv(c160, c160, (7, 1)),
            conv(c160, c128, (1, 7)),
        ),
        nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=True), conv(c_in, c128, 1)),
    )
    return block, 4 * c128


def inception_d(style: Style, c_in: int, width: float = 0.5) -> tuple[nn.Module, int]:
    """The authors' reduced Inception-v3 type D: an n-pixel map becomes ``(n - 3) // 2 + 1``
    (unpadded stride-2 convolutions and max pool); ``512 * width`` channels out."""
    c192, c216, c168, c128 = (_w(width, n) for n in (192, 216, 168, 128))
    block = _Concat(
        nn.Sequential(cbr(c_in, c192, 1, style=style), cbr(c192, c216, 3, 2, 0, style)),
        nn.Sequential(
            cbr(c_in, c192, 1, style=style),
            cbr(c192, c192, (1, 7), style=style),
            cbr(c192, c192, (7, 1), style=style),
            cbr(c192, c168, 3, 2, 0, style),
        ),
        nn.Sequential(nn.MaxPool2d(3, stride=2), cbr(c_in, c128, 1, style=style)),
    )
    return block, c216 + c168 + c128


def inception_e(style: Style, c_in: int, width: float = 1.0) -> tuple[nn.Module, int]:
    """The authors' reduced Inception-v3 type E (expanded filter bank); 748 * ``width`` out."""
    c128, c160, c108 = (_w(width, n) for n in (128, 160, 108))
    block = _Concat(
        cbr(c_in, c128, 1, style=style),
        _Then(cbr(c_in, c128, 1, style=style), *_asym(style, c128, c128)),
        _Then(
            nn.Sequential(cbr(c_in, c160, 1, style=style), cbr(c160, c128, 3, style=style)),
            *_asym(style, c128, c128),
        ),
        nn.Sequential(
            nn.AvgPool2d(3, 1, 1, count_include_pad=True), cbr(c_in, c108, 1, style=style)
        ),
    )
    return block, 5 * c128 + c108


def _cbr_block(
    style: Style, c_in: int, f: float = 256, k: float = 3, s: float = 1, p: float | None = None
) -> tuple[nn.Module, int]:
    return cbr(c_in, int(f), int(k), int(s), None if p is None else int(p), style), int(f)


def _gap(style: Style, c_in: int) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), c_in


def _dense(style: Style, c_in: int, n: float) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Linear(c_in, int(n)), nn.ReLU(inplace=True)), int(n)


def _dropout(style: Style, c_in: int, p: float) -> tuple[nn.Module, int]:
    if not 0.0 <= p < 1.0:
        raise UserError(f"dropout probability must be in [0, 1), got {p:g}")
    return nn.Dropout(p), c_in


def _heads(c: int, heads: float) -> int:
    h = int(heads) or max(1, c // 64)
    if c % h:
        raise UserError(f"{h} attention heads do not divide {c} channels; give heads that do")
    return h


class _Attention(nn.Module):
    """Multi-head attention of ``queries`` over ``tokens`` written out in matrix products
    (every exporter and compiler reads it)."""

    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(c, c), nn.Linear(c, 2 * c), nn.Linear(c, c)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        n, lq, c = queries.shape
        d = c // self.heads
        q = self.q(queries).reshape(n, lq, self.heads, d).transpose(1, 2)
        k, v = self.kv(tokens).reshape(n, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) * d**-0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(n, lq, c))


class _TokenBlock(nn.Module):
    """A pre-norm transformer block: self-attention and an MLP, each residual."""

    def __init__(self, c: int, heads: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, round(c * ratio))
        self.norm1, self.attn = nn.LayerNorm(c), _Attention(c, heads)
        self.norm2 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y)
        return x + self.mlp(self.norm2(x))


class _AttentionPool(nn.Module):
    """Tokens to one vector: the class token (or, without prefix tokens, the mean token) plus
    a learned offset attends over all tokens; layer norm after."""

    def __init__(self, c: int, heads: int, prefix: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.offset = nn.Parameter(torch.zeros(1, 1, c))
        self.norm_in, self.attn, self.norm = nn.LayerNorm(c), _Attention(c, heads), nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_in(x)
        query = x[:, :1] if self.prefix else x.mean(dim=1, keepdim=True)
        return self.norm(self.attn(query + self.offset, x)[:, 0])


class _PatchMean(nn.Module):
    """The mean of the patch tokens (the prefix tokens left out)."""

    def __init__(self, prefix: int) -> None:
        super().__init__()
        self.prefix = prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.prefix :].mean(dim=1)


class _First(nn.Module):
    """The first prefix token."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _ln(style: Style, c_in: int, prefix: int = 0) -> tuple[nn.Module, int]:
    return nn.LayerNorm(c_in), c_in


def _tblock(
    style: Style, c_in: int, heads: float = 0, ratio: float = 2, prefix: int = 0
) -> tuple[nn.Module, int]:
    return _TokenBlock(c_in, _heads(c_in, heads), ratio), c_in


def _attnpool(style: Style, c_in: int, heads: float = 0, prefix: int = 0) -> tuple[nn.Module, int]:
    return _AttentionPool(c_in, _heads(c_in, heads), prefix), c_in


def _cls(style: Style, c_in: int, prefix: int = 0) -> tuple[nn.Module, int]:
    if not prefix:
        raise UserError("block cls needs a prefix token (a class token), and there is none")
    return _First(), c_in


@dataclass(frozen=True)
class BlockKind:
    """What a block name builds: ``build(style, c_in, *args) -> (module, c_out)``; how many
    arguments it takes, which must be whole numbers (``ints``) and which may be 0
    (``zero_ok``; the others must be positive); whether it needs an (N, C, H, W) input, and
    whether it reads tokens (``tokens``: built with the number of prefix tokens) and which of
    those pool them to a vector (``pools``)."""

    build: Callable[..., tuple[nn.Module, int]]
    min_args: int = 0
    max_args: int = 0
    ints: tuple[int, ...] = ()
    zero_ok: tuple[int, ...] = ()
    spatial: bool = True
    tokens: bool = False
    pools: bool = False


BLOCKS: dict[str, BlockKind] = {
    "cbr": BlockKind(_cbr_block, 0, 4, ints=(0, 1, 2, 3), zero_ok=(3,)),
    "inception": BlockKind(inception_cifar, 0, 3, ints=(1, 2), zero_ok=(2,)),
    "inception_c": BlockKind(inception_c, 0, 1),
    "inception_d": BlockKind(inception_d, 0, 1),
    "inception_e": BlockKind(inception_e, 0, 1),
    "gap": BlockKind(_gap),
    "dense": BlockKind(_dense, 1, 1, ints=(0,), spatial=False),
    "dropout": BlockKind(_dropout, 1, 1, zero_ok=(0,), spatial=False),
    "ln": BlockKind(_ln, spatial=False, tokens=True),
    "tblock": BlockKind(_tblock, 0, 2, ints=(0,), zero_ok=(0,), spatial=False, tokens=True),
    "attnpool": BlockKind(
        _attnpool, 0, 1, ints=(0,), zero_ok=(0,), spatial=False, tokens=True, pools=True
    ),
    "cls": BlockKind(_cls, spatial=False, tokens=True, pools=True),
}

_STYLE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*:(.*)\Z", re.DOTALL)


def split_style(text: str) -> tuple[str, str]:
    """``"keras: cbr gap"`` -> ``("keras", " cbr gap")``; a layout without a style prefix is
    ``torch``. Unknown styles raise ``ValueError``."""
    m = _STYLE.match(text)
    if not m:
        return "torch", text
    if m.group(1) not in STYLES:
        raise UserError(
            f"layout {text!r}: unknown style {m.group(1)!r}; known: {', '.join(STYLES)}"
        )
    return m.group(1), m.group(2)


_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^()]*)\))?\s*")


def _parse_args(text: str, name: str, raw: str | None) -> tuple[float, ...]:
    """The numeric arguments of one block, checked against its ``BlockKind``."""
    kind = BLOCKS[name]
    args: list[float] = []
    for part in [p.strip() for p in raw.split(",")] if raw and raw.strip() else []:
        try:
            args.append(float(part))
        except ValueError:
            raise UserError(f"layout {text!r}: {name} argument {part!r} is not a number") from None
    if not kind.min_args <= len(args) <= kind.max_args:
        raise UserError(
            f"layout {text!r}: {name} takes {kind.min_args} to {kind.max_args} arguments, "
            f"got {len(args)}"
        )
    for i, a in enumerate(args):
        if a < 0 or (a == 0 and i not in kind.zero_ok):
            raise UserError(f"layout {text!r}: {name} arguments must be positive, got {a:g}")
        if i in kind.ints and a != int(a):
            raise UserError(f"layout {text!r}: {name} argument {a:g} must be an integer")
    return tuple(args)


def parse_layout(text: str | Sequence[str]) -> list[Block]:
    """Parse a layout string (a style prefix is checked and left out) into blocks; unknown
    blocks, styles or bad arguments raise ``ValueError``."""
    if not isinstance(text, str):
        text = " ".join(text)
    _, body = split_style(text)
    blocks, pos = [], 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if not m or m.end() == pos:
            raise UserError(f"layout {text!r}: cannot read from position {pos}: {body[pos:]!r}")
        name, raw = m.group(1), m.group(2)
        pos = m.end()
        if name not in BLOCKS:
            raise UserError(f"layout {text!r}: unknown block {name!r}; known: {', '.join(BLOCKS)}")
        blocks.append(Block(name, _parse_args(text, name, raw)))
    return blocks


def reads_tokens(layout: str | Sequence[Block]) -> bool:
    """Whether a branch of ``layout`` reads ``(N, L, C)`` tokens: it starts with a token block."""
    blocks = parse_layout(layout) if isinstance(layout, str) else list(layout)
    return bool(blocks) and BLOCKS[blocks[0].name].tokens


def _add_block(
    block: Block, style: Style, c: int, form: str, prefix: int
) -> tuple[nn.Module, int, str]:
    """One block of a branch reading ``form`` (``grid``, ``tokens`` or ``vector``): the
    module, its channels out and the form it leaves."""
    kind = BLOCKS[block.name]
    if kind.tokens:
        if form != "tokens":
            raise UserError(
                f"block {block} reads tokens: token blocks come first in a layout, before "
                "the blocks that pool them"
            )
        module, c = kind.build(style, c, *block.args, prefix=prefix)
        return module, c, "vector" if kind.pools else "tokens"
    if block.name == "gap" and form == "tokens":
        return _PatchMean(prefix), c, "vector"
    if kind.spatial and form != "grid":
        where = "after gap" if form == "vector" else "on tokens: start the layout with it"
        raise UserError(f"block {block} needs a feature map, but it comes {where}")
    if block.name == "dense" and form != "vector":
        raise UserError(
            f"block {block} needs a vector: put gap before it (or attnpool, for tokens)"
        )
    module, c = kind.build(style, c, *block.args)
    return module, c, "vector" if block.name == "gap" else form


def build_branch(
    layout: str | Sequence[Block],
    in_channels: int,
    num_groups: int,
    style: str | Style | None = None,
    prefix_tokens: int = 0,
) -> nn.Sequential:
    """Build a branch: the layout's blocks, a ``gap`` if still spatial (or still tokens), a
    linear to the groups, all made in ``style`` (default: the layout's style prefix, else
    ``torch``).

    Input ``(N, in_channels, H, W)``, or ``(N, L, in_channels)`` tokens whose first
    ``prefix_tokens`` are prefix tokens where the layout starts with a token block; output
    logits ``(N, num_groups)``.
    """
    name = split_style(layout)[0] if isinstance(layout, str) else "torch"
    blocks = parse_layout(layout) if isinstance(layout, str) else list(layout)
    if isinstance(style, str) and style not in STYLES:
        raise UserError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    style = STYLES[style] if isinstance(style, str) else style or STYLES[name]
    if in_channels < 1 or num_groups < 1:
        raise UserError(
            f"branch needs positive channels and groups, got {in_channels}, {num_groups}"
        )
    layers: list[nn.Module] = []
    c, form = in_channels, "tokens" if reads_tokens(blocks) else "grid"
    for block in blocks:
        module, c, form = _add_block(block, style, c, form, prefix_tokens)
        layers.append(module)
    if form != "vector":
        module, c, form = _add_block(Block("gap"), style, c, form, prefix_tokens)
        layers.append(module)
    layers.append(nn.Linear(c, num_groups))
    return style.initialize(nn.Sequential(*layers))
