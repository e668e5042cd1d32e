"""A whole labelled image dataset held in memory as uint8 tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ssal.errors import UserError

__all__ = ["ImageArrays"]


@dataclass
class ImageArrays:
    """A whole labelled image dataset held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W), pixel values 0..255.
        labels: int64 tensor (N,), class indices in ``[0, len(class_names))``.
        class_names: human-readable name of each class, indexed by label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise UserError(
                "ImageArrays.images must be a uint8 tensor of shape (N, C, H, W), got "
                f"{self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise UserError(
                "ImageArrays.labels must be an int64 tensor of shape (N,), got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise UserError(
                f"ImageArrays has {len(self.images)} images but {len(self.labels)} labels"
            )
        if not self.class_names:
            raise UserError("ImageArrays.class_names must not be empty")
        if len(self.labels) > 0:
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= len(self.class_names):
                raise UserError(
                    f"ImageArrays labels span [{low}, {high}] but there are only "
                    f"{len(self.class_names)} class names"
                )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``class_names``, not just those present)."""
        return len(self.class_names)

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> ImageArrays:
        """Return a copy holding only the samples at ``indices`` (same class names)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageArrays(self.images[idx], self.labels[idx], list(self.class_names))
