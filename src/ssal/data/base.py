"""The datamodule protocol that training, evaluation and reports rely on, implemented once.

Every ssal datamodule serves uint8 image batches; on the device they become normalised float
batches (augmented while training) in ``prepare_batch``. Beyond Lightning's loaders each one
tells ``num_classes``, ``in_channels``, ``class_names``, ``mean``, ``std`` and ``image_size``,
serves the held-out split (``heldout_dataloader``, for groupings and alpha) and says how its
evaluation images are made (``preprocessing``, stored in checkpoints so inference needs no
datamodule).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import lightning
import torch
from torch.utils.data import DataLoader

from ssal.card import Preprocessing
from ssal.data.transforms import normalize

__all__ = ["SSALDataModule"]


class SSALDataModule(lightning.LightningDataModule):
    """Base of ssal's datamodules. Subclasses set ``class_path`` (the public name recorded in
    checkpoints), provide the metadata properties and loaders, and may override
    ``augment_batch`` (device-side augmentation of uint8 training batches)."""

    class_path: ClassVar[str] = ""
    eval_crop_size: int | None = None  # image folders: the side of the evaluation crop

    num_classes: int
    in_channels: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    image_size: int  # side of the (square) training images the model sees

    def __init__(self) -> None:
        super().__init__()
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._epoch_rng: tuple[tuple, torch.Generator] | None = None

    # ---- protocol -------------------------------------------------------------------------
    def test_dataloader(self) -> DataLoader:
        """The test split, in order: what training validates on (the paper reports the test
        set), so the same loader."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order."""
        return self.val_dataloader()

    def heldout_dataloader(self) -> DataLoader:
        """The held-out part of the training split, in order, without augmentation."""
        raise NotImplementedError(f"{type(self).__name__} has no held-out split")

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Augment a uint8 training batch on its device (default: as it is)."""
        return images

    def prepare_batch(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """A uint8 batch ``(B, C, H, W)`` on any device -> normalised float32, augmented first
        when ``train``."""
        if train:
            images = self.augment_batch(images)
        if images.device not in self._stats:
            self._stats[images.device] = (
                torch.tensor(self.mean, dtype=torch.float32, device=images.device),
                torch.tensor(self.std, dtype=torch.float32, device=images.device),
            )
        mean, std = self._stats[images.device]
        return normalize(images, mean, std)

    def preprocessing(self) -> Preprocessing:
        """How evaluation images become the model's input (``Preprocessing.for_eval``)."""
        return Preprocessing.for_eval(self.mean, self.std, self.eval_crop_size)

    def describe(self) -> dict[str, Any]:
        """Class path and arguments, enough to rebuild this datamodule (``from_config``)."""
        return {"class_path": self.class_path, "init_args": dict(getattr(self, "hparams", {}))}

    # ---- Lightning ------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise (and, while training, augment) the image tensor of a transferred batch."""
        return self.prepare_batch(batch[0], train=self.is_training), batch[1]

    @property
    def is_training(self) -> bool:
        """Whether the attached trainer is in a training loop."""
        trainer = self.trainer
        return trainer is not None and bool(trainer.training)

    def epoch_generator(self, device: torch.device, seed: int = 0) -> torch.Generator:
        """The random stream of this epoch's augmentation on ``device``, seeded by ``seed``,
        the run's seed, the epoch and the rank: a run resumed at an epoch draws what an
        uninterrupted run drew there, and ranks draw differently."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        rank = self.replicas()[1]
        run_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        key = (torch.device(device), epoch, rank, run_seed, seed)
        if self._epoch_rng is None or self._epoch_rng[0] != key:
            mixed = (((seed * 1_000_003 + run_seed) * 1_009 + epoch) * 9_176 + rank) % 2**63
            self._epoch_rng = (key, torch.Generator(device=device).manual_seed(mixed))
        return self._epoch_rng[1]

    def replicas(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the attached trainer (1, 0 without one)."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)
