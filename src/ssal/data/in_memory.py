"""CIFAR-10/100 and Fashion-MNIST held in memory as uint8, augmented on the device."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ssal.data.arrays import ImageArrays
from ssal.data.base import SSALDataModule
from ssal.data.loaders import batch_loader
from ssal.data.readers import DATASET_SHAPES, canonical_name, load_dataset
from ssal.data.splits import channel_stats, stratified_split
from ssal.data.transforms import check_shift_options, shift_flip
from ssal.errors import UserError

__all__ = ["InMemoryDataModule"]


class InMemoryDataModule(SSALDataModule):
    """CIFAR-10/100 or Fashion-MNIST held in memory as uint8, augmented on the device.

    Batches leave the DataLoader as ``(uint8 (B, C, H, W), int64 (B,))``; after transfer to the
    device they become normalised float32, with random shifts/flips while training.

    Args:
        dataset: "cifar10", "cifar100" or "fashion-mnist".
        data_dir: folder holding the dataset (see :func:`load_dataset` for defaults).
        batch_size: training batch size (incomplete last batch dropped).
        eval_batch_size: batch size for validation, test, held-out and prediction.
        heldout: fraction (< 1) or count (>= 1) of the training split held out, stratified.
        seed: seeds the held-out split, the subsample and the per-epoch shuffling.
        augment: apply :func:`shift_flip` to training batches.
        max_shift: largest shift in pixels for the augmentation.
        flip: random horizontal flips in the augmentation.
        shift_draw: how shifts are drawn: "uniform" in ``[-max_shift, max_shift]``, or "keras"
            (a magnitude in ``0..max_shift-1`` with a random sign, as Keras'
            ``width_shift_range=max_shift``: the authors' CIFAR runs).
        pad_mode: the border the shift reveals: "reflect" (``dcb|abcd``) or "symmetric"
            (``dcba|abcd``, Keras' ``fill_mode="reflect"``: the authors' CIFAR runs).
        normalization: "channel" (mean/std per channel of the training part) or "unit" (scale
            to [0, 1] only).
        train_size: if set, a stratified subsample of this many training images is used.
        num_workers: DataLoader workers (0 is usually fastest for in-memory data).
        device_resident: hold the uint8 arrays on the GPU (None: when training on CUDA
            with no workers).
    """

    class_path = "ssal.data.InMemoryDataModule"

    def __init__(
        self,
        dataset: str = "fashion-mnist",
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        heldout: float = 0.1,
        seed: int = 0,
        augment: bool = True,
        max_shift: int = 5,
        flip: bool = True,
        shift_draw: str = "uniform",
        pad_mode: str = "reflect",
        normalization: str = "channel",
        train_size: int | None = None,
        num_workers: int = 0,
        device_resident: bool | None = None,
    ) -> None:
        super().__init__()
        self.dataset = canonical_name(dataset)
        if batch_size < 1 or eval_batch_size < 1:
            raise UserError(
                f"batch_size and eval_batch_size must be >= 1, got {batch_size} and "
                f"{eval_batch_size}"
            )
        if normalization not in ("channel", "unit"):
            raise UserError(f"normalization must be 'channel' or 'unit', got {normalization!r}")
        if max_shift < 0:
            raise UserError(f"max_shift must be >= 0, got {max_shift}")
        check_shift_options(shift_draw, pad_mode)
        if heldout < 0:
            raise UserError(f"heldout must be >= 0, got {heldout}")
        if train_size is not None and train_size < 1:
            raise UserError(f"train_size must be >= 1 or None, got {train_size}")
        if num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.heldout = heldout
        self.seed = seed
        self.augment = augment
        self.max_shift = max_shift
        self.flip = flip
        self.shift_draw, self.pad_mode = shift_draw, pad_mode
        self.normalization = normalization
        self.train_size = train_size
        self.num_workers = num_workers
        self.device_resident = device_resident
        self._resident: dict[int, ImageArrays] = {}
        self.train_arrays: ImageArrays | None = None
        self.heldout_arrays: ImageArrays | None = None
        self.test_arrays: ImageArrays | None = None
        self._mean: list[float] | None = None
        self._std: list[float] | None = None

    # ---- setup ------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Load both splits, hold out part of training, compute normalisation. Idempotent."""
        if self.train_arrays is not None:
            return
        full = load_dataset(self.dataset, self.data_dir, "train")
        test = load_dataset(self.dataset, self.data_dir, "test")
        if self.train_size is not None and self.train_size < len(full):
            keep, _ = stratified_split(full.labels, len(full) - self.train_size, self.seed)
            full = full.subset(keep)
        elif self.train_size is not None and self.train_size > len(full):
            raise UserError(
                f"train_size={self.train_size} exceeds the {len(full)} training images of "
                f"{self.dataset}"
            )
        train_idx, heldout_idx = stratified_split(full.labels, self.heldout, self.seed + 1)
        train = full.subset(train_idx)
        if self.normalization == "channel":
            mean, std = channel_stats(train.images)
            if min(std) <= 0:
                raise UserError(
                    f"a channel of the {self.dataset} training images is constant (std 0); use "
                    "normalization='unit'"
                )
        else:
            channels = train.images.shape[1]
            mean, std = [0.0] * channels, [1.0] * channels
        self.heldout_arrays = full.subset(heldout_idx)
        self.test_arrays = test
        self._mean, self._std = mean, std
        self.train_arrays = train

    def _ready(self) -> ImageArrays:
        self.setup()
        assert self.train_arrays is not None
        return self.train_arrays

    # ---- metadata ---------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes (known without loading the data)."""
        if self.train_arrays is not None:
            return self.train_arrays.num_classes
        return DATASET_SHAPES[self.dataset][0]

    @property
    def in_channels(self) -> int:
        """Image channels: 3 for CIFAR, 1 for Fashion-MNIST."""
        if self.train_arrays is not None:
            return int(self.train_arrays.images.shape[1])
        return DATASET_SHAPES[self.dataset][1]

    @property
    def image_size(self) -> int:
        """Side of the square images (32 for CIFAR, 28 for Fashion-MNIST)."""
        if self.train_arrays is not None:
            return int(self.train_arrays.images.shape[-1])
        return DATASET_SHAPES[self.dataset][2]

    @property
    def class_names(self) -> list[str]:
        """Class names indexed by label (loads the data if needed)."""
        return list(self._ready().class_names)

    @property
    def mean(self) -> list[float]:
        """Per-channel mean used for normalisation, on the [0, 1] scale (loads if needed)."""
        self._ready()
        assert self._mean is not None
        return list(self._mean)

    @property
    def std(self) -> list[float]:
        """Per-channel std used for normalisation, on the [0, 1] scale (loads if needed)."""
        self._ready()
        assert self._std is not None
        return list(self._std)

    # ---- loaders ----------------------------------------------------------------------------

    def _on_device(self, arrays: ImageArrays) -> ImageArrays:
        """``arrays`` moved to the trainer's GPU (once) when the data is device-resident.

        ``device_resident=None`` means: on a CUDA device, with no workers. uint8 CIFAR is
        150 MB, so holding it on the GPU removes every per-step host-to-device copy.
        """
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        wanted = self.device_resident
        if wanted is None:
            wanted = device is not None and device.type == "cuda" and self.num_workers == 0
        if not wanted or device is None or device.type == "cpu":
            return arrays
        key = id(arrays)
        if key not in self._resident:
            self._resident[key] = ImageArrays(
                arrays.images.to(device), arrays.labels.to(device), arrays.class_names
            )
        return self._resident[key]

    def _loader(self, arrays: ImageArrays, batch_size: int, train: bool) -> DataLoader:
        replicas, rank = self.replicas()
        if train and len(arrays) // replicas < batch_size:
            raise UserError(
                f"the training part has {len(arrays)} images ({len(arrays) // replicas} per "
                f"device), fewer than batch_size={batch_size}; lower batch_size"
            )
        arrays = self._on_device(arrays)
        return batch_loader(
            arrays,
            batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.seed,
            num_workers=self.num_workers,
            num_replicas=replicas,
            rank=rank,
            pin_memory=torch.cuda.is_available() and arrays.images.device.type == "cpu",
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (per-epoch, seeded) training batches; incomplete last batch dropped."""
        return self._loader(self._ready(), self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """The test split (the paper reports the test set as validation)."""
        self._ready()
        assert self.test_arrays is not None
        return self._loader(self.test_arrays, self.eval_batch_size, train=False)

    def heldout_dataloader(self) -> DataLoader:
        """The held-out part of the training split, in order, without augmentation."""
        self._ready()
        assert self.heldout_arrays is not None
        if len(self.heldout_arrays) == 0:
            raise UserError("no held-out data: set heldout to a fraction > 0 or a count >= 1")
        return self._loader(self.heldout_arrays, self.eval_batch_size, train=False)

    # ---- device-side processing -------------------------------------------------------------

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """The paper's random shifts (mirrored borders) and horizontal flips, on the device."""
        if self.augment and (self.max_shift > 0 or self.flip):
            rng = self.epoch_generator(images.device, self.seed)
            return shift_flip(
                images, self.max_shift, self.flip, rng, self.shift_draw, self.pad_mode
            )
        return images
