"""timm's models by name: ``timm/<name>``, branches after the stages of timm's
``feature_info`` at about a quarter, half and three quarters of the depth."""

from __future__ import annotations

import difflib
import functools
import re

import torch
from torch import nn

from ssal.backbones.entry import ModelEntry, Network
from ssal.backbones.external import (
    DEFAULT_INPUT,
    build_published,
    external_entry,
    import_timm,
    quarter_stages,
)
from ssal.backbones.registry import register_family
from ssal.backbones.transformers import format_suffixes, size_kwargs
from ssal.errors import UserError

__all__ = ["timm_entry"]


@functools.lru_cache(maxsize=64)
def timm_entry(model_name: str) -> ModelEntry:
    """The entry of timm's ``model_name`` (its stages found on the meta device); a
    ``ValueError`` with the closest names where timm has no such model."""
    timm = import_timm()
    known = timm.list_models()
    if model_name not in known and model_name.split(".")[0] not in known:
        close = difflib.get_close_matches(model_name, known, n=3)
        hint = f"; did you mean {', '.join('timm/' + c for c in close)}?" if close else ""
        raise UserError(f"timm has no model {model_name!r}{hint}")

    sized: list[type] = []  # the model's class where it is built for one image size

    def build(
        num_classes: int, in_channels: int = 3, pretrained: bool = False, image_size: int = 0
    ) -> nn.Module:
        size = size_kwargs(sized[0], "timm", image_size or None) if sized else {}
        return timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels,
            **size,
        )  # fmt: skip

    with torch.device("meta"):
        probe = build(1000)
    sized += [type(probe)] if size_kwargs(type(probe), "timm", 1) else []
    stages = [f for f in probe.feature_info if f["reduction"] >= 4]
    picked = quarter_stages([f["module"] for f in stages])
    widths = [next(f["num_chs"] for f in stages if f["module"] == p) for p in picked]
    size = tuple(probe.pretrained_cfg.get("input_size", DEFAULT_INPUT))
    suffixes = format_suffixes(probe, picked, size)
    name = f"timm/{model_name}"
    published = functools.partial(build_published, name, lambda **kw: build(**kw, pretrained=True))
    return external_entry(
        name,
        Network(build, size, pretrained_build=published, sized=bool(sized)),  # type: ignore[arg-type]
        picked,
        widths,
        f"timm's {model_name}; branches after {', '.join(picked)}",
        suffixes,
    )


@register_family(r"timm/([\w.\-]+)", "timm/resnet18", listed=False, shown="timm/NAME")
def timm_family(m: re.Match) -> ModelEntry:
    """Any model of timm's."""
    return timm_entry(m.group(1))
