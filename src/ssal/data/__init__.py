"""Datasets, splits, transforms and Lightning data modules for SSAL.

Small datasets (CIFAR-10/100, Fashion-MNIST) are held in memory as uint8 tensors and served in
whole batches; augmentation (random reflect-padded shifts and horizontal flips, as in the
paper) and normalisation happen on the device the batch is moved to. Image folders (ImageNet)
decode and crop in loader workers, or on the device. Modules, from the files up:

- ``readers``: CIFAR python-format and Fashion-MNIST idx files; ``safe_pickle``: CIFAR's
  pickles read as plain data, never code; ``arrays``: ``ImageArrays``;
- ``splits``: stratified held-out splits, channel statistics;
- ``transforms``: shift/flip, normalisation, the evaluation resize and crop rule;
- ``decoding``: JPEG decoding on the device, the CPU fallback;
- ``loaders``: whole-batch samplers and loaders;
- ``base``: the datamodule protocol; ``in_memory``, ``image_folder``, ``shards``: datamodules.

Names are imported on first use, so ``ssal.data.transforms`` (pure torch) does not load
Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageArrays": "arrays",
    "CIFAR_URLS": "readers",
    "DEFAULT_FASHION_MNIST_DIR": "readers",
    "FASHION_MNIST_CLASSES": "readers",
    "KNOWN_DATASETS": "readers",
    "load_cifar": "readers",
    "load_dataset": "readers",
    "load_fashion_mnist": "readers",
    "channel_stats": "splits",
    "stratified_split": "splits",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "normalize": "transforms",
    "random_resized_crop_box": "transforms",
    "shift_flip": "transforms",
    "decode_images": "decoding",
    "BatchIndexDataset": "loaders",
    "EpochBatchSampler": "loaders",
    "batch_loader": "loaders",
    "SSALDataModule": "base",
    "InMemoryDataModule": "in_memory",
    "ImageFolderDataModule": "image_folder",
    "ShardDataModule": "shards",
    "datamodule_from_config": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
