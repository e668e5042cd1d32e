"""Batched in-memory loading: whole batches by one indexing operation, sharded over ranks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from ssal.data.arrays import ImageArrays
from ssal.errors import UserError

__all__ = ["BatchIndexDataset", "EpochBatchSampler", "batch_loader"]


class BatchIndexDataset(Dataset):
    """Map-style dataset over :class:`ImageArrays` indexed by whole batches of indices.

    ``dataset[indices]`` returns ``(images uint8 (B, C, H, W), labels int64 (B,))`` in one
    indexing operation, so a DataLoader with ``batch_size=None`` does no per-sample work.
    """

    def __init__(self, arrays: ImageArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self.arrays.images
        if images.device != idx.device:  # device-resident data: index where the data lives
            idx = idx.to(images.device, non_blocking=True)
        return images[idx], self.arrays.labels[idx]


class EpochBatchSampler(DistributedSampler):
    """Yields batches of indices (int64 tensors), sharded over ``num_replicas`` ranks.

    With ``shuffle`` the order is a permutation seeded by ``seed + epoch``; call
    :meth:`set_epoch` before each epoch (Lightning does this). With ``drop_last`` every rank
    gets the same number of samples (the tail of the order is dropped) and only full batches.
    Without ``drop_last`` the ranks' shares cover every sample exactly once, with no padding
    duplicates; shares may differ by one sample. Subclasses ``DistributedSampler`` only so that
    Lightning recognises it as already distributed and leaves it alone.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if dataset_size < 0:
            raise UserError(f"dataset_size must be >= 0, got {dataset_size}")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise UserError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got "
                f"num_replicas={num_replicas}, rank={rank}"
            )
        # DistributedSampler.__init__ is not called: it requires a dataset and an initialised
        # process group; the attributes it would set are set here.
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        if drop_last:
            self.num_samples = dataset_size // num_replicas
            self._start = rank * self.num_samples
        else:
            self._start = rank * dataset_size // num_replicas
            self.num_samples = (rank + 1) * dataset_size // num_replicas - self._start
        self.total_size = self.num_samples * num_replicas if drop_last else dataset_size

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation for ``epoch`` (only matters with ``shuffle``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator)
        else:
            order = torch.arange(self.dataset_size)
        share = order[self._start : self._start + self.num_samples]
        yield from share[: len(self) * self.batch_size].split(self.batch_size)


def batch_loader(
    arrays: ImageArrays,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    seed: int = 0,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader yielding whole ``(images uint8 (B, C, H, W), labels int64 (B,))`` batches.

    Uses ``batch_size=None`` with an :class:`EpochBatchSampler`, so each batch is one tensor
    indexing operation. See :class:`EpochBatchSampler` for shuffling and sharding.
    """
    sampler = EpochBatchSampler(
        len(arrays), batch_size, shuffle, drop_last, seed, num_replicas, rank
    )
    return DataLoader(
        BatchIndexDataset(arrays),
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
