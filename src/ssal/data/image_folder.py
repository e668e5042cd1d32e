"""ImageNet-style image folders: ``train/<class>/*`` and ``val/<class>/*``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ssal.data.base import SSALDataModule
from ssal.data.decoding import collate_encoded, decode_images, load_rgb, read_file
from ssal.data.splits import stratified_split
from ssal.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    folder_transforms,
    random_resized_crop_box,
)
from ssal.errors import UserError

__all__ = ["ImageFolderDataModule", "default_workers"]


def default_workers(limit: int = 8) -> int:
    """Loader worker processes by default: one per CPU core this process may use, at most
    ``limit`` (more workers than cores only compete for them)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(limit, cores))


def _with_transform(dataset: Any, transform: Any) -> Any:
    """Shallow copy of an ImageFolder sharing its file list but using another transform."""
    import copy

    clone = copy.copy(dataset)
    clone.transform = transform
    return clone


class ImageFolderDataModule(SSALDataModule):
    """ImageNet-style ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` folders.

    Images are decoded and cropped on the CPU into uint8 (B, 3, S, S) batches (train:
    RandomResizedCrop [+ colour jitter] + horizontal flip; eval: resize to S/0.875 + centre
    crop) and normalised
    on the device after transfer. With ``decode_on_device`` the training loader's workers only
    read the files; decoding (nvJPEG on a GPU), cropping and flipping happen on the device after
    transfer, which frees the CPU cores that otherwise bound an ImageNet epoch.

    Args:
        data_dir: root folder holding ``train/`` and ``val/``.
        image_size: side S of the crops.
        batch_size: training batch size (incomplete last batch dropped).
        eval_batch_size: batch size for validation, test, held-out and prediction.
        num_workers: DataLoader worker processes (default: one per CPU core, at most 8).
        heldout: fraction (< 1) or count (>= 1) of ``train/`` held out, stratified.
        seed: seeds the held-out split and the shuffling.
        mean: per-channel mean on the [0, 1] scale (ImageNet's by default).
        std: per-channel std on the [0, 1] scale (ImageNet's by default).
        decode_on_device: decode and augment training images on the training device.
        crop_scale: the area share RandomResizedCrop draws from (torchvision's default
            ``[0.08, 1]``; the authors' ImageNet runs ``[0.3, 4/3]``).
        color_jitter: brightness, contrast, saturation (and hue) of torchvision's
            ``ColorJitter`` between crop and flip (the authors': ``[0.4, 0.4, 0.4]``); not
            with ``decode_on_device``.
        drop_last: drop the incomplete last training batch (the authors' loader keeps it).
    """

    class_path = "ssal.data.ImageFolderDataModule"

    def __init__(
        self,
        data_dir: str,
        image_size: int = 224,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int | None = None,
        heldout: float = 0.0,
        seed: int = 0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        decode_on_device: bool = False,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        color_jitter: list[float] | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if image_size < 1 or batch_size < 1 or eval_batch_size < 1:
            raise UserError(
                f"image_size, batch_size and eval_batch_size must be >= 1, got {image_size}, "
                f"{batch_size}, {eval_batch_size}"
            )
        if num_workers is not None and num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        if heldout < 0:
            raise UserError(f"heldout must be >= 0, got {heldout}")
        mean = list(IMAGENET_MEAN) if mean is None else [float(m) for m in mean]
        std = list(IMAGENET_STD) if std is None else [float(s) for s in std]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UserError(f"mean and std need 3 values each with std > 0, got {mean}, {std}")
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1]:
            raise UserError(f"crop_scale must be [low, high], 0 < low <= high; got {crop_scale}")
        if color_jitter and decode_on_device:
            raise UserError(
                "color_jitter runs in the loader workers: set decode_on_device false to use it"
            )
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.heldout = heldout
        self.seed = seed
        self.mean = mean
        self.std = std
        self.decode_on_device = decode_on_device
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.color_jitter = list(color_jitter) if color_jitter else None
        self.drop_last = drop_last
        self._generator: torch.Generator | None = None
        self.in_channels = 3
        self.eval_crop_size = image_size
        self.train_set: Dataset | None = None
        self.heldout_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._class_names: list[str] | None = None

    def setup(self, stage: str | None = None) -> None:
        """Scan the folders and build the datasets and held-out split. Idempotent."""
        if self.train_set is not None:
            return
        from torchvision.datasets import ImageFolder

        root = Path(self.data_dir).expanduser()
        layout = (
            f"expected {root}/train/<class>/<image> and {root}/val/<class>/<image> "
            "(one sub-folder per class, same class folders in both)"
        )
        for part in ("train", "val"):
            if not (root / part).is_dir():
                raise FileNotFoundError(f"folder {root / part} not found; {layout}")
        train_tf = folder_transforms(
            self.image_size, True, crop_scale=self.crop_scale, color_jitter=self.color_jitter
        )
        eval_tf = folder_transforms(self.image_size, train=False)
        # load_rgb: PIL's bomb limit, one decoding rule, errors that name the file
        train_full = ImageFolder(str(root / "train"), transform=train_tf, loader=load_rgb)
        val = ImageFolder(str(root / "val"), transform=eval_tf, loader=load_rgb)
        if train_full.classes != val.classes:
            missing = sorted(set(train_full.classes) ^ set(val.classes))
            raise UserError(
                f"class folders differ between {root / 'train'} and {root / 'val'} "
                f"(e.g. {missing[:5]}); {layout}"
            )
        targets = torch.tensor(train_full.targets, dtype=torch.long)
        train_idx, heldout_idx = stratified_split(targets, self.heldout, self.seed)
        train_source = train_full
        if self.decode_on_device:  # workers read bytes; decoding waits for the device
            train_source = _with_transform(train_full, None)
            train_source.loader = read_file
        self.train_set = Subset(train_source, train_idx.tolist())
        self.heldout_set = Subset(_with_transform(train_full, eval_tf), heldout_idx.tolist())
        self.val_set = val
        self._class_names = list(train_full.classes)

    @property
    def num_classes(self) -> int:
        """Number of class folders (scans the folders if needed)."""
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        """Class folder names, indexed by label (scans the folders if needed)."""
        self.setup()
        assert self._class_names is not None
        return list(self._class_names)

    def _loader(self, dataset: Dataset | None, batch_size: int, train: bool) -> DataLoader:
        assert dataset is not None
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_encoded if train and self.decode_on_device else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, randomly cropped and flipped training batches (uint8)."""
        self.setup()
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """Centre-cropped ``val/`` batches (uint8)."""
        self.setup()
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def heldout_dataloader(self) -> DataLoader:
        """Centre-cropped held-out part of ``train/``, in order."""
        self.setup()
        assert self.heldout_set is not None
        if len(self.heldout_set) == 0:  # type: ignore[arg-type]
            raise UserError("no held-out data: set heldout to a fraction > 0 or a count >= 1")
        return self._loader(self.heldout_set, self.eval_batch_size, train=False)

    def crop_batch(self, images: Sequence[torch.Tensor], train: bool) -> torch.Tensor:
        """Decoded (3, H, W) images to one uint8 (B, 3, S, S) batch on their device, with the
        CPU path's transforms: RandomResizedCrop + flip (``train``) or resize + centre crop."""
        from torchvision.transforms.v2 import functional as F

        size = [self.image_size, self.image_size]
        prep = self.preprocessing()
        out = []
        for img in images:
            if train:
                g = self._crop_generator()
                top, left, h, w = random_resized_crop_box(
                    img.shape[-2], img.shape[-1], g, self.crop_scale
                )
                img = F.resized_crop(img, top, left, h, w, size, antialias=True)
                if torch.rand((), generator=g) < 0.5:
                    img = F.horizontal_flip(img)
            else:
                img = prep.resize_image(img, size)
            out.append(img)
        return torch.stack(out)

    def _crop_generator(self) -> torch.Generator:
        """CPU generator for the device-side crops, seeded by ``seed``, the run's
        ``seed_everything`` seed and the process rank (ranks seeded alike would otherwise crop
        alike). Checkpoints carry its state (:meth:`state_dict`)."""
        if self._generator is None:
            trainer = getattr(self, "trainer", None)
            rank = trainer.global_rank if trainer is not None else 0
            run_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            seed = (self.seed * 1_000_003 + run_seed) * 1_009 + rank + 1
            self._generator = torch.Generator().manual_seed(seed % 2**63)
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        """The device-side crop stream's state, saved in checkpoints so a resumed run goes on
        with the crops an uninterrupted one would have drawn."""
        return {} if self._generator is None else {"crop_generator": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the crop stream saved by :meth:`state_dict`."""
        if "crop_generator" in state_dict:
            self._crop_generator().set_state(state_dict["crop_generator"])

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Move a batch; encoded training images are decoded and augmented on ``device``."""
        if isinstance(batch[0], list):  # from the training loader with decode_on_device
            images = self.crop_batch(decode_images(batch[0], device, batch[2]), train=True)
            return images, batch[1].to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
