"""What the timm and torchvision families share (``timm/<name>``, ``torchvision/<name>``, in
``ssal.backbones.families``): default positions, scaled layouts and published weights.

``ssal.create_model("timm/convnext_tiny", 10, groupings)`` builds timm's model (or
torchvision's, with ``torchvision/resnet18``) with ``num_classes`` outputs and attaches SSAL
branches. Positions default to the backbone's stages at about a quarter, half and three
quarters of its depth: timm's ``feature_info`` for timm models, the modules that end each
resolution of the network for torchvision's. Layouts default to the authors' ImageNet branches
with every width scaled by the backbone's width at the position over ResNet-50's there, so a
small backbone gets small branches. timm is optional (``pip install 'ssal[timm]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ssal.backbones.entry import ModelEntry, Network
from ssal.backbones.families.imagenet import IMAGENET_BRANCHES, IMAGENET_LAYOUTS, IMAGENET_PAPER
from ssal.backbones.transformers import transformer_layouts
from ssal.errors import UserError
from ssal.files import squeeze
from ssal.layouts import Block, parse_layout

__all__ = [
    "DEFAULT_INPUT",
    "build_published",
    "external_entry",
    "import_timm",
    "quarter_stages",
    "scale_layout",
    "stage_positions",
]

RESNET50_WIDTHS = (256, 512, 1024)  # ResNet-50's channels after stages 1-3, where its branches read
_WIDTH_ARG = {"cbr": 256.0, "inception_c": 0.5, "inception_d": 0.5, "inception_e": 1.0}
DEFAULT_INPUT = (3, 224, 224)


def scale_layout(layout: str, factor: float) -> str:
    """``layout`` with every width (``cbr``'s filters, the Inception blocks' width factor)
    multiplied by ``factor``; other blocks as they are."""
    out = []
    for block in parse_layout(layout):
        if block.name in _WIDTH_ARG:
            args = list(block.args) or [_WIDTH_ARG[block.name]]
            args[0] = args[0] * factor
            if block.name == "cbr":
                args[0] = max(8, round(args[0]))
            block = Block(block.name, tuple(args))
        out.append(str(block))
    return " ".join(out)


def quarter_stages(stages: Sequence[str]) -> list[str]:
    """The stages at about 1/4, 1/2 and 3/4 of the depth (the first three of four)."""
    n = len(stages)
    if n < 3:
        raise UserError(
            f"found {n} stage(s) with (N, C, H, W) feature maps where SSAL's three branches need "
            "3; give the positions by module name (--model.network.positions)"
        )
    picks = sorted({max(0, round(n * k / 4) - 1) for k in (1, 2, 3)})
    while len(picks) < 3:  # short networks: fill from the front
        picks = sorted({*picks, min(set(range(n)) - set(picks))})
    return [stages[i] for i in picks]


@torch.no_grad()
def stage_positions(backbone: nn.Module, input_size: Sequence[int]) -> tuple[list[str], list[int]]:
    """Module names that end each resolution of ``backbone`` (reductions 4, 8, 16, 32...),
    found by one forward pass on the meta device, and their channels.

    Candidates are the backbone's children and the children of its containers (``features``,
    ``trunk_output``, ``layer3``...); a container that stays at one resolution stands for its
    children (``layer3``, not ``layer3.5``), one that spans several gives way to them."""
    containers = {
        name
        for name, child in backbone.named_children()
        if isinstance(child, nn.Sequential | nn.ModuleList | nn.ModuleDict) and len(child) > 1
    }
    candidates = [(n, m) for n, m in backbone.named_children()]
    candidates += [
        (f"{c}.{n}", m) for c in containers for n, m in backbone.get_submodule(c).named_children()
    ]
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_hook(
            lambda _m, _a, out, n=n: (
                seen.append((n, tuple(out.shape)))
                if isinstance(out, torch.Tensor) and out.dim() == 4
                else None
            )
        )
        for n, m in candidates
    ]
    try:
        backbone.to("meta").eval()(torch.zeros(1, *input_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    side = input_size[-1]
    level = {n: round(side / shape[-1]) for n, shape in seen}
    single = {
        c for c in containers if len({r for n, r in level.items() if n.startswith(c + ".")}) <= 1
    }
    ends: dict[int, tuple[str, int]] = {}
    for name, shape in seen:
        owner = name.split(".", 1)[0]
        usable = name in single or (owner not in single and name not in containers)
        if usable and 4 <= level[name] <= 64 and shape[-1] > 1:  # not the stem or a global pool
            ends[level[name]] = (name, shape[1])  # the last module at this resolution
    levels = sorted(ends)
    return [ends[r][0] for r in levels], [ends[r][1] for r in levels]


def _layouts(widths: Sequence[int]) -> tuple[str, ...]:
    return tuple(
        scale_layout(layout, max(1 / 16, w / ref))
        for layout, w, ref in zip(IMAGENET_LAYOUTS, widths, RESNET50_WIDTHS, strict=True)
    )


def external_entry(
    name: str,
    network: Network,
    positions: Sequence[str],
    widths: Sequence[int],
    description: str,
    suffixes: Sequence[str] | None = None,
) -> ModelEntry:
    """The entry of a timm or torchvision backbone: branches at ``positions`` (channels
    ``widths``) with the authors' ImageNet layouts scaled to those widths, the ImageNet
    branches' weights and alpha, and the ImageNet setting (1000 classes, 200/334/500 groups).
    ``suffixes`` give each position's format (``":tokens"``, ``":nhwc"`` or ``""``, added
    where the position has none); a position read as tokens gets the token layout."""
    suffixes = suffixes or [""] * len(positions)
    branches = replace(
        IMAGENET_BRANCHES,
        positions=tuple(p if ":" in p else p + s for p, s in zip(positions, suffixes, strict=True)),
        layouts=transformer_layouts(suffixes, _layouts(widths)),
    )
    return ModelEntry(
        name=name, network=network, branches=branches, paper=IMAGENET_PAPER, description=description
    )


def import_timm() -> ModuleType:
    """timm, or a ``ValueError`` saying how to install it (it is optional)."""
    try:
        import timm
    except ImportError:
        raise UserError(
            "timm backbones need timm: pip install 'ssal[timm]' (or pip install timm)"
        ) from None
    return timm


def build_published(name: str, build: Callable[..., nn.Module], **kwargs: object) -> nn.Module:
    """Build with the published weights (from the library's local cache, or downloaded); one
    clear line naming the file where it is missing and cannot be downloaded."""
    try:
        if not _cached_or_reachable(name):
            raise OSError("not in the local cache, and its server is not reachable")
        return build(**kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if isinstance(e, ValueError) and "timm" in str(e) and "pip install" in str(e):
            raise
        reason = squeeze(e)[:160]
        raise UserError(
            f"published weights of {name} could not be loaded ({reason}); without network the "
            f"file must be in {_weights_source(name)[0]} (download it where there is network), "
            "or give --model.network.pretrained PATH"
        ) from None


def _weights_source(name: str) -> tuple[str, str | None, list[Path]]:
    """Where ``name``'s published weights are looked for (in words), the URL they come from,
    and the local files that would hold them. torchvision: torch hub's checkpoint folder;
    timm: the Hugging Face repository in the Hugging Face cache (or torch hub's folder for
    weights published as a URL)."""
    family, model_name = name.split("/", 1)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        if family == "torchvision":
            import torchvision

            url = torchvision.models.get_model_weights(model_name).DEFAULT.url
            file = hub / url.rsplit("/", 1)[-1]
            return str(file), url, [file]
        from huggingface_hub import constants, try_to_load_from_cache

        cfg = import_timm().models.get_pretrained_cfg(model_name)
        if cfg is not None and cfg.hf_hub_id:
            where = f"{constants.HF_HUB_CACHE} (Hugging Face repository {cfg.hf_hub_id})"
            names = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
            found = [try_to_load_from_cache(cfg.hf_hub_id, n) for n in names]
            return where, constants.ENDPOINT, [Path(f) for f in found if isinstance(f, str)]
        if cfg is not None and cfg.url:
            file = hub / cfg.url.rsplit("/", 1)[-1]
            return str(file), cfg.url, [file]
    except (ImportError, AttributeError, KeyError, ValueError):
        pass
    return str(hub) if family == "torchvision" else "the Hugging Face cache", None, []


def _cached_or_reachable(name: str) -> bool:
    """Whether the published weights can be had: a local file holds them, or the host they
    come from resolves. Without network huggingface_hub retries for about a minute before it
    fails, and torch hub announces a download; this answers at once."""
    import socket
    from urllib.parse import urlparse

    _, url, files = _weights_source(name)
    if url is None or any(f.is_file() for f in files) or os.environ.get("HF_HUB_OFFLINE"):
        return True  # nothing to check, or found: the library's own path and message
    try:
        socket.getaddrinfo(urlparse(url).hostname or "", 443)
    except (OSError, UnicodeError):
        return False
    return True
