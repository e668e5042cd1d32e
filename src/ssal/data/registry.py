"""Rebuilding a datamodule from the description a checkpoint records (``describe()``)."""

from __future__ import annotations

import importlib
from typing import Any

from ssal.errors import UserError

__all__ = ["DATAMODULES", "datamodule_from_config"]

# public class path -> (module, class); only ssal's own datamodules are rebuilt
DATAMODULES = {
    "ssal.data.InMemoryDataModule": ("ssal.data.in_memory", "InMemoryDataModule"),
    "ssal.data.ImageFolderDataModule": ("ssal.data.image_folder", "ImageFolderDataModule"),
    "ssal.data.ShardDataModule": ("ssal.data.shards", "ShardDataModule"),
}


def datamodule_from_config(data: dict[str, Any] | None, **overrides: Any) -> Any:
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
