"""torchvision's classification models by name: ``torchvision/<name>``, branches after the
modules that end the resolutions at about a quarter, half and three quarters of the depth."""

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
    quarter_stages,
    stage_positions,
)
from ssal.backbones.registry import register_family
from ssal.backbones.transformers import size_kwargs, torchvision_positions
from ssal.errors import UserError

__all__ = ["torchvision_entry"]


@functools.lru_cache(maxsize=64)
def torchvision_entry(model_name: str) -> ModelEntry:
    """The entry of torchvision's ``model_name`` (its stages found by one forward pass on the
    meta device); a ``ValueError`` with the closest names where torchvision has none."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=3)
        hint = f"; did you mean {', '.join('torchvision/' + c for c in close)}?" if close else ""
        raise UserError(f"torchvision has no classification model {model_name!r}{hint}")

    sized: list[type] = []  # the model's class where it is built for one image size

    def build(
        num_classes: int, in_channels: int = 3, weights: str | None = None, image_size: int = 0
    ) -> nn.Module:
        if in_channels != 3:
            raise UserError(f"torchvision/{model_name} takes 3-channel images, not {in_channels}")
        size = size_kwargs(sized[0], "torchvision", image_size or None) if sized else {}
        if weights is None:
            return torchvision.models.get_model(
                model_name, weights=None, num_classes=num_classes, **size
            )
        model = torchvision.models.get_model(model_name, weights=weights, **size)
        _replace_head(model, num_classes)
        return model

    try:
        with torch.device("meta"):
            probe = build(1000)
    except (NotImplementedError, RuntimeError):  # builders that compute with tensors (regnet)
        probe = build(1000)
    sized += [type(probe)] if size_kwargs(type(probe), "torchvision", 1) else []
    special = torchvision_positions(probe)
    if special:
        picked, widths = special
    else:
        names, channels = stage_positions(probe, DEFAULT_INPUT)
        picked = quarter_stages(names)
        widths = [channels[names.index(p)] for p in picked]
    suffixes = [":" + p.split(":", 1)[1] if ":" in p else "" for p in picked]
    name = f"torchvision/{model_name}"
    published = functools.partial(
        build_published, name, lambda **kw: build(**kw, weights="DEFAULT")
    )
    return external_entry(
        name,
        Network(build, DEFAULT_INPUT, pretrained_build=published, sized=bool(sized)),
        picked,
        widths,
        f"torchvision's {model_name}; branches after {', '.join(picked)}",
        suffixes,
    )


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """A fresh last linear layer with ``num_classes`` outputs (published weights have 1000)."""
    last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    name, linear = last
    if linear.out_features == num_classes:
        return
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(linear.in_features, num_classes))


@register_family(
    r"torchvision/(\w+)", "torchvision/resnet18", listed=False, shown="torchvision/NAME"
)
def torchvision_family(m: re.Match) -> ModelEntry:
    """Any classification model of torchvision's."""
    return torchvision_entry(m.group(1))
