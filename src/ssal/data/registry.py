"""Rebuilding the datamodule a model card records (``ModelCard.data``: the datamodule's
``describe()``)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ssal.errors import UserError

if TYPE_CHECKING:
    from ssal.card import ModelCard

__all__ = ["DATAMODULES", "datamodule_from_config", "datamodule_rebuilder"]

# public class path -> (module, class); only ssal's own datamodules are rebuilt
DATAMODULES = {
    "ssal.data.InMemoryDataModule": ("ssal.data.in_memory", "InMemoryDataModule"),
    "ssal.data.ImageFolderDataModule": ("ssal.data.image_folder", "ImageFolderDataModule"),
    "ssal.data.ShardDataModule": ("ssal.data.shards", "ShardDataModule"),
}


def datamodule_from_config(data: Mapping[str, Any] | None, **overrides: Any) -> Any:
    """Instantiate and set up (``"test"``) the datamodule a checkpoint names, with overrides
    (``None`` values leave the recorded ones)."""
    if not data:
        raise UserError("the checkpoint does not record its data; was it written by ssal fit?")
    path = data.get("class_path")
    if path not in DATAMODULES:
        raise UserError(f"checkpoint names an unknown datamodule {path!r}")
    module, name = DATAMODULES[path]
    cls = getattr(importlib.import_module(module), name)
    kwargs = {k: v for k, v in dict(data.get("init_args", {})).items() if not k.startswith("_")}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    dm = cls(**kwargs)
    dm.setup("test")
    return dm


def datamodule_rebuilder(**overrides: Any) -> Callable[[ModelCard], Any]:
    """A function from a card to its set-up datamodule (``datamodule_from_config`` with
    ``overrides``), building each recorded datamodule once: runs trained on the same data
    (a baseline and its SSAL model) share it."""
    built: dict[str, Any] = {}

    def rebuild(card: ModelCard) -> Any:
        data = card.data_config()
        key = json.dumps(data, sort_keys=True)
        if key not in built:
            built[key] = datamodule_from_config(data, **overrides)
        return built[key]

    return rebuild
