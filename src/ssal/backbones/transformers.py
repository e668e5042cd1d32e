"""Default branch positions of transformer families, with the format each one is read in.

A ViT's blocks all have one resolution: the branches read the blocks at about 1/4, 1/2 and
3/4 of the depth by index (timm's ``blocks.N``, torchvision's
``encoder.layers.encoder_layer_N``), as tokens (``:tokens``), with the token-native layout
``TOKEN_LAYOUT``. Hierarchical transformers (Swin, MaxViT, MambaOut...) read their stages as
CNNs do; stages that are channels-last carry ``:nhwc`` (timm's ``output_fmt``, torchvision's
Swin ``features.N``). The image size a backbone is built for goes to the builders that need it
(``size_kwargs``): ViTs, Swin and MaxViT fix it when built.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
from torch import nn

from ssal.features import backbone_format

__all__ = [
    "TOKEN_LAYOUT",
    "format_suffixes",
    "size_kwargs",
    "torchvision_positions",
    "transformer_layouts",
]

# a transformer block of the backbone's width (one head per 64 channels, MLP twice as wide)
# on the tokens, then attention pooling with the class token as query (the README's table)
TOKEN_LAYOUT = "tblock attnpool"


def _quarter_picks(n: int) -> list[int]:
    """Indices at about 1/4, 1/2 and 3/4 of ``n`` (the first three of four for 4)."""
    return sorted({max(0, round(n * k / 4) - 1) for k in (1, 2, 3)})


@torch.no_grad()
def format_suffixes(
    backbone: nn.Module, names: Sequence[str], input_size: Sequence[int]
) -> list[str]:
    """Per module name, the suffix its output is read with: ``":tokens"`` for ``(N, L, C)``,
    ``":nhwc"`` for the 4-D maps of a channels-last backbone, ``""`` for NCHW; one forward
    pass on the meta device (``backbone`` is moved there)."""
    dims: dict[str, int] = {}

    def seen(name: str, _m: nn.Module, _a: tuple, out: object) -> None:
        dims.setdefault(name, out.dim() if isinstance(out, torch.Tensor) else 0)

    hooks = [
        backbone.get_submodule(n).register_forward_hook(functools.partial(seen, n)) for n in names
    ]
    try:
        backbone.to("meta").eval()(torch.zeros(1, *input_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    nhwc = backbone_format(backbone) == "nhwc"
    return [":tokens" if dims.get(n) == 3 else ":nhwc" if nhwc else "" for n in names]


def transformer_layouts(suffixes: Sequence[str], cnn_layouts: Sequence[str]) -> tuple[str, ...]:
    """The token layout where a position reads tokens, the CNN layout (scaled) elsewhere."""
    return tuple(
        TOKEN_LAYOUT if s == ":tokens" else lay
        for s, lay in zip(suffixes, cnn_layouts, strict=True)
    )


def torchvision_positions(backbone: nn.Module) -> tuple[list[str], list[int]] | None:
    """Default positions and widths of torchvision's ViT (``encoder.layers.encoder_layer_N``
    at about 1/4, 1/2 and 3/4 of the depth, as tokens) and Swin (the stages ``features.N``
    that end reductions 4, 8 and 16, channels-last); ``None`` for other models."""
    name = type(backbone).__name__
    if name == "VisionTransformer" and hasattr(backbone, "encoder"):
        layers = [n for n, _ in backbone.encoder.layers.named_children()]
        picks = _quarter_picks(len(layers))
        width = int(backbone.hidden_dim)
        return [f"encoder.layers.{layers[i]}:tokens" for i in picks], [width] * len(picks)
    if name.startswith("SwinTransformer") and hasattr(backbone, "features"):
        # features: patch embedding, then (stage, patch merging) pairs; stages at 1, 3, 5, 7
        stages = list(range(1, len(backbone.features), 2))[:3]
        widths = [int(backbone.features[i][-1].norm1.normalized_shape[0]) for i in stages]
        return [f"features.{i}:nhwc" for i in stages], widths
    return None


def size_kwargs(build_class: type, family: str, image_size: int | None) -> dict[str, int]:
    """The keyword that builds ``build_class`` for ``image_size``-pixel images, where its
    constructor takes one (timm's ``img_size``, torchvision's ``image_size``); else nothing."""
    if image_size is None:
        return {}
    params = inspect.signature(build_class.__init__).parameters
    key = "img_size" if family == "timm" else "image_size"
    # subclasses that pass **kwargs on (timm's distilled DeiT) take it where they can resize
    passes_on = any(p.kind is p.VAR_KEYWORD for p in params.values())
    takes = key in params or (passes_on and hasattr(build_class, "set_input_size"))
    return {key: int(image_size)} if takes else {}
