"""Evaluate a trained model as the paper does, streaming over a data loader.

Numbers come from ``SSALMetrics`` (no logits are held, so ImageNet-sized sets are fine).
``build_datamodule`` rebuilds the data a checkpoint was trained on from its stored settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import numpy as np
import torch
from rich.progress import Progress

from ssal.metrics import SSALMetrics
from ssal.model import SSALModel, SSALOutput

__all__ = ["build_datamodule", "evaluate_model", "heldout_confusion"]

ALLOWED_DATAMODULES = (
    "ssal.data.InMemoryDataModule",
    "ssal.data.ImageFolderDataModule",
    "ssal.shards.ShardDataModule",
)


def build_datamodule(data: dict[str, Any] | None, **overrides: Any) -> L.LightningDataModule:
    """Instantiate the datamodule a checkpoint names (only ssal's own), with overrides."""
    if not data:
        raise ValueError("the checkpoint does not record its data; was it written by ssal fit?")
    path = data["class_path"]
    if path not in ALLOWED_DATAMODULES:
        raise ValueError(f"checkpoint names an unknown datamodule {path!r}")
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    kwargs = {k: v for k, v in dict(data.get("init_args", {})).items() if not k.startswith("_")}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    dm = cls(**kwargs)
    dm.setup("test")
    return dm


def _is_channels_last(model: torch.nn.Module) -> bool:
    """Whether the conv weights are channels_last, judged on the first weight whose layout
    tells (a 1-channel or 1x1 weight is both contiguous and channels_last)."""
    cl = torch.channels_last
    for p in model.parameters():
        if p.dim() == 4 and p.is_contiguous() != p.is_contiguous(memory_format=cl):
            return p.is_contiguous(memory_format=cl)
    return True  # nothing to convert


@torch.no_grad()
def evaluate_model(
    model: SSALModel,
    loader: Iterable,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    alpha: float,
    device: torch.device | str = "cpu",
    description: str = "evaluating",
    progress: bool = True,
    on_batch: Callable[[SSALOutput, torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Fine (+TR), joint (+JP), branch and consistency figures on every batch of ``loader``.

    ``prepare`` turns a raw batch of images on ``device`` into the model's input
    (conversion and normalisation as in training, without augmentation). ``on_batch(output,
    labels)`` sees every batch's output (the report collects per-image predictions with it).
    Image batches run in channels_last (faster convolutions on CPUs and GPUs); the model is
    left in the memory format it came in.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    converted = False
    metrics = SSALMetrics(model.group_indices, num_classes, alpha).to(device)
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(description, total=total)
            for images, labels in loader:
                x = prepare(images.to(device, non_blocking=True))
                if x.ndim == 4:
                    if not converted and not _is_channels_last(model):
                        model.to(memory_format=torch.channels_last)
                        converted = True
                    x = x.contiguous(memory_format=torch.channels_last)
                labels = labels.to(device, non_blocking=True)
                out = model(x)
                metrics.update(out.logits, out.branch_logits, labels)
                if on_batch is not None:
                    on_batch(out, labels)
                bar.advance(task)
    finally:
        if converted:
            model.to(memory_format=torch.contiguous_format)
    return metrics.compute()


def heldout_confusion(
    model: SSALModel,
    loader: Iterable,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The fine head's ``(C, C)`` confusion matrix (rows: true class) on ``loader``."""
    result = evaluate_model(
        model, loader, prepare, num_classes, 0.0, device, "confusion on held-out split"
    )
    return np.asarray(result["confusion"], dtype=np.int64)
