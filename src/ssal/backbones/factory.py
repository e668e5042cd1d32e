"""Building a named model: the registry entry, then its backbone (fresh, published or from a
file), then its branch positions and layouts, then the ``SSALModel`` (timm's ``create_model``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from ssal.backbones.entry import ModelEntry
from ssal.backbones.registry import get_entry
from ssal.backbones.weights import load_backbone_weights
from ssal.errors import UserError
from ssal.grouping import Grouping, as_grouping
from ssal.model import BranchSpec, SSALModel

__all__ = ["create_model", "default_groupings"]


def default_groupings(num_classes: int, sizes: Sequence[int]) -> list[Grouping]:
    """Placeholder groupings (class c -> c mod G) used to build and count a model."""
    return [Grouping(np.arange(num_classes) % g, name=f"modulo-{g}") for g in sizes]


def create_model(
    name: str,
    num_classes: int = 100,
    groupings: Sequence[Grouping | np.ndarray | Sequence[int]] | None = None,
    *,
    in_channels: int | None = None,
    positions: Sequence[str] | None = None,
    layouts: Sequence[str] | None = None,
    bn_momentum: float | None = None,
    pretrained: bool | str | None = None,
    image_size: int | None = None,
    **backbone_kwargs: object,
) -> SSALModel:
    """Build a registered model; ``groupings=None`` gives the plain baseline (no branches).

    One grouping per branch, in the entry's position order; with fewer groupings than
    positions the deepest positions (and layouts) are used. ``positions``/``layouts`` override
    the entry's (module names and layout strings); ``bn_momentum`` sets every batch norm's
    (PyTorch convention: the weight of the new batch statistics). ``backbone_kwargs`` go to the
    backbone's builder, after the entry's ``ssal_build`` when there are groupings.
    ``pretrained``: ``True`` for the backbone's published weights (timm's, torchvision's), or
    the path of a state dict or safetensors file; the branches start fresh either way.
    ``image_size``: the side of the square images the model sees (default: the entry's); a
    backbone built for one size (ViT, Swin, MaxViT) is built for it.
    """
    entry = get_entry(name)
    c_in = in_channels or entry.network.input_size[0]
    size = {"image_size": int(image_size)} if image_size and entry.network.sized else {}
    backbone = _backbone(
        entry, num_classes, c_in, bool(groupings), pretrained, size, backbone_kwargs
    )
    specs: list[BranchSpec] = []
    if groupings:
        specs = _branch_specs(entry, num_classes, groupings, positions, layouts)
    sides = (image_size, image_size) if image_size else entry.network.input_size[1:]
    model = SSALModel(backbone, specs, input_size=(c_in, *sides))
    if bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
    model.name = name  # type: ignore[assignment]
    return model


def _backbone(
    entry: ModelEntry,
    num_classes: int,
    in_channels: int,
    branched: bool,
    pretrained: bool | str | None,
    size: dict[str, int],
    backbone_kwargs: dict[str, object],
) -> nn.Module:
    """The entry's backbone: with its published weights, or fresh (and then, given a path,
    with the weights of that file); ``size`` (``image_size``) goes to a sized builder."""
    network = entry.network
    if pretrained is True or (isinstance(pretrained, str) and pretrained.lower() == "true"):
        if network.pretrained_build is None:
            raise UserError(
                f"{entry.name} has no published weights; give a file: "
                "--model.network.pretrained PATH"
            )
        return network.pretrained_build(num_classes=num_classes, in_channels=in_channels, **size)
    kwargs = {**(network.ssal_build if branched else {}), **size, **backbone_kwargs}
    backbone = network.build(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if pretrained and str(pretrained).lower() != "false":
        load_backbone_weights(backbone, pretrained)
    return backbone


def _deepest(items: Sequence[str], k: int) -> list[str]:
    """The last ``k`` of ``items`` (one item stands for all)."""
    items = list(items)
    return items if len(items) == 1 else items[len(items) - k :]


def _branch_specs(
    entry: ModelEntry,
    num_classes: int,
    groupings: Sequence[Grouping | np.ndarray | Sequence[int]],
    positions: Sequence[str] | None,
    layouts: Sequence[str] | None,
) -> list[BranchSpec]:
    """One branch per grouping at the deepest positions, each with its layout."""
    name = entry.name
    groups = [as_grouping(g) for g in groupings]
    k = len(groups)
    pos = list(positions or entry.branches.positions)
    if k > len(pos):
        raise UserError(f"{k} groupings but {name} has {len(pos)} branch positions")
    pos, lay = pos[len(pos) - k :], _deepest(layouts or entry.branches.layouts, k)
    if len(lay) == 1:
        lay = lay * k
    if len(lay) != k:
        raise UserError(f"{name}: {len(lay)} layouts for {k} branches; give one per branch")
    for g in groups:
        if g.num_classes != num_classes:
            raise UserError(
                f"grouping {g.name!r} covers {g.num_classes} classes, model has {num_classes}"
            )
    return [BranchSpec(p, lay_, g) for p, lay_, g in zip(pos, lay, groups, strict=True)]
