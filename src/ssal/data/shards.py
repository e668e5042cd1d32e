"""Streaming data for many nodes: WebDataset tar shards written by ``ssal data convert``.

Instead of every node holding an image folder, the training set lives as tar shards on
shared or object storage (any path or URL WebDataset reads, e.g. ``pipe:aws s3 cp ...``).
Each sample is ``{key}.png`` (or the original ``.jpg``) plus ``{key}.cls``; ``meta.json`` lists
the splits, shards, class names and normalisation. ``ShardDataModule`` streams them: training
draws shards with replacement so every rank runs the same number of steps; evaluation gives
each rank its own shards, so every image is counted exactly once.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from ssal.data.arrays import ImageArrays
from ssal.data.base import SSALDataModule
from ssal.data.decoding import decode_on_cpu
from ssal.data.readers import load_dataset
from ssal.data.splits import channel_stats, stratified_split
from ssal.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_shift_options,
    folder_transforms,
    shift_flip,
)
from ssal.errors import UserError
from ssal.files import read_json, write_json

__all__ = ["ShardDataModule", "convert_to_shards", "read_meta"]

META = "meta.json"
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")
MAX_IMAGE_SIZE = 4096
FORMAT = "ssal-shards"
DECODABLE = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".gif": "gif"}


def _writer(out: Path, split: str, shard_size: int):  # noqa: ANN202 - webdataset.ShardWriter
    import webdataset as wds

    return wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=shard_size, verbose=0)


def _write_arrays(out: Path, split: str, arrays: ImageArrays, shard_size: int) -> dict:
    from torchvision.io import encode_png

    with _writer(out, split, shard_size) as sink:
        for i in range(len(arrays)):
            png = encode_png(arrays.images[i]).numpy().tobytes()
            sink.write({"__key__": f"{split}{i:08d}", "png": png, "cls": int(arrays.labels[i])})
    return _split_entry(out, split, len(arrays), shard_size)


def _split_entry(out: Path, split: str, n: int, shard_size: int) -> dict:
    shards = sorted(p.name for p in out.glob(f"{split}-*.tar"))
    counts = [min(shard_size, n - k * shard_size) for k in range(len(shards))]
    return {"shards": shards, "samples": n, "samples_per_shard": counts}


def _write_files(out: Path, split: str, samples: list[tuple[str, int]], shard_size: int) -> dict:
    from PIL import Image

    with _writer(out, split, shard_size) as sink:
        for i, (path, label) in enumerate(samples):
            ext = DECODABLE.get(Path(path).suffix.lower())
            data = Path(path).read_bytes()
            if ext is None:  # a format the GPU/CPU decoders do not read: store it as PNG
                buf = io.BytesIO()
                Image.open(path).convert("RGB").save(buf, format="PNG")
                ext, data = "png", buf.getvalue()
            sink.write({"__key__": f"{split}{i:08d}", ext: data, "cls": int(label)})
    return _split_entry(out, split, len(samples), shard_size)


def convert_to_shards(
    source: str,
    data_dir: str | Path | None,
    out: str | Path,
    shard_size: int = 10000,
    heldout: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``source`` ("cifar10", "cifar100", "fashion-mnist" or "imagefolder") as shards.

    Splits: ``train`` (less a stratified ``heldout`` part, seeded), ``heldout`` and ``test``.
    Returns the ``meta.json`` document.
    """
    if shard_size < 1:
        raise UserError(f"shard size must be >= 1, got {shard_size}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; give a new folder for the shards")
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT, "version": 1, "source": source, "splits": {}}
    if source == "imagefolder":
        from torchvision.datasets import ImageFolder

        root = Path(data_dir or ".")
        for sub in ("train", "val"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"{root / sub} not found: expected train/ and val/ folders")
        train, val = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
        if val.classes != train.classes:
            raise UserError(f"{root}: train/ and val/ hold different class folders")
        labels = torch.tensor(train.targets)
        keep, held = stratified_split(labels, heldout, seed)
        splits = {
            "train": [train.samples[i] for i in keep.tolist()],
            "heldout": [train.samples[i] for i in held.tolist()],
            "test": val.samples,
        }
        for split, samples in splits.items():
            meta["splits"][split] = _write_files(out, split, samples, shard_size)
        meta.update(
            kind="folder",
            class_names=train.classes,
            in_channels=3,
            image_size=None,
            mean=list(IMAGENET_MEAN),
            std=list(IMAGENET_STD),
        )
    else:
        full = load_dataset(source, data_dir, "train")
        test = load_dataset(source, data_dir, "test")
        keep, held = stratified_split(full.labels, heldout, seed)
        train = full.subset(keep)
        mean, std = channel_stats(train.images)
        for split, arrays in (("train", train), ("heldout", full.subset(held)), ("test", test)):
            meta["splits"][split] = _write_arrays(out, split, arrays, shard_size)
        meta.update(
            kind="fixed",
            class_names=full.class_names,
            in_channels=int(full.images.shape[1]),
            image_size=int(full.images.shape[-1]),
            mean=mean,
            std=std,
        )
    meta["num_classes"] = len(meta["class_names"])
    write_json(out / META, meta)
    return meta


def read_meta(location: str | Path) -> dict[str, Any]:
    """Read and check ``meta.json`` of a shard folder: ``ValueError`` naming it for anything
    that is not what ``convert_to_shards`` writes (shard names are plain ``*.tar`` file names
    in the folder: never a path or a ``pipe:`` command)."""
    path = Path(location) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write shards with `ssal data convert`")
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "splits" not in meta:
        raise UserError(f"{path}: not an ssal shards description")
    problem = _meta_problem(meta)
    if problem:
        raise UserError(f"{path}: {problem}; write the shards again with `ssal data convert`")
    return meta


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _split_problem(name: str, entry: Any) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
        return f"split {name!r} lists no shards"
    shards, counts = entry["shards"], entry.get("samples_per_shard")
    if not all(isinstance(s, str) and SHARD_NAME.fullmatch(s) for s in shards):
        return f"split {name!r} names shards that are not plain *.tar files of the folder"
    if (
        not isinstance(counts, list)
        or len(counts) != len(shards)
        or not all(map(_is_count, counts))
    ):
        return f"split {name!r}: samples_per_shard must give one count per shard"
    if not _is_count(entry.get("samples")) or sum(counts) != entry["samples"]:
        return f"split {name!r}: samples must be the sum of samples_per_shard"
    return None


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with a shards description, or None."""
    splits, names = meta["splits"], meta.get("class_names")
    if not isinstance(splits, dict) or not set(splits) <= {"train", "heldout", "test"}:
        return "splits must map train, heldout and test to their shards"
    for name, entry in splits.items():
        problem = _split_problem(name, entry)
        if problem:
            return problem
    if meta.get("kind") not in ("fixed", "folder"):
        return "kind must be 'fixed' or 'folder'"
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "class_names must be a list of names"
    if meta.get("num_classes") != len(names):
        return f"num_classes must be the {len(names)} class names"
    channels = meta.get("in_channels")
    if channels not in (1, 3) or isinstance(channels, bool):
        return "in_channels must be 1 or 3"
    size = meta.get("image_size")
    if meta["kind"] == "fixed" and not (_is_count(size) and 0 < size <= MAX_IMAGE_SIZE):
        return f"image_size must be a size of 1..{MAX_IMAGE_SIZE} pixels"
    for key in ("mean", "std"):
        v = meta.get(key)
        if not isinstance(v, list) or len(v) != channels or not all(_is_number(x) for x in v):
            return f"{key} must hold {channels} numbers"
    if min(meta["std"]) <= 0:
        return "std must be positive"
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Decode:
    """Sample dict -> (uint8 (C, H, W), label), with an optional per-sample transform.

    Images are decoded by ``ssal.data.decoding`` (header checked first); labels must lie in
    ``0..num_classes-1`` and fixed-size images must be ``size`` x ``size``; anything else is a
    ``ValueError`` naming the shard and the sample.
    """

    def __init__(
        self,
        channels: int,
        transform: Callable | None,
        num_classes: int | None = None,
        size: int | None = None,
    ) -> None:
        self.channels, self.transform = channels, transform
        self.num_classes, self.size = num_classes, size

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int]:
        name = f"{sample.get('__url__', 'shard')}: sample {sample.get('__key__')!r}"
        key = next((k for k in ("png", "jpg", "webp", "gif") if k in sample), None)
        if key is None or "cls" not in sample:
            raise UserError(f"{name} lacks an image or a label (.cls); convert the data again")
        image = decode_on_cpu(bytes(sample[key]), self.channels, name)
        try:
            label = int(sample["cls"])
        except ValueError:
            raise UserError(f"{name}: the label (.cls) is not a number") from None
        if self.num_classes is not None and not 0 <= label < self.num_classes:
            raise UserError(f"{name}: label {label} outside 0..{self.num_classes - 1}")
        if self.size is not None and tuple(image.shape[-2:]) != (self.size, self.size):
            raise UserError(f"{name}: image of {tuple(image.shape[-2:])}, expected {self.size}")
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class _ShardError(UserError):
    """A shard that cannot be read."""


def _unreadable_shard(exn: Exception) -> bool:
    """WebDataset's error handler: a shard that cannot be opened or read as a tar file ends in
    one ``ValueError`` naming it (webdataset appends the shard's URL to the error's args)."""
    if isinstance(exn, _ShardError):  # handlers are nested: the inner one already said it
        raise exn
    url = next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), None)
    reason = str(exn.args[0] if exn.args else type(exn).__name__).split(" @ ")[0][:200]
    raise _ShardError(
        f"{url or 'a shard'}: cannot read the shard ({reason}); write the shards again with "
        "`ssal data convert`"
    ) from None


def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


class _ShardStream(IterableDataset):
    """Batches from a list of shard URLs, for one rank; split further across loader workers."""

    def __init__(
        self,
        urls: list[str],
        decode: _Decode,
        batch_size: int,
        train: bool,
        steps: int | None,
        seed: int,
        shuffle_buffer: int,
        num_batches: int,
    ) -> None:
        self.urls, self.decode, self.batch_size = urls, decode, batch_size
        self.num_batches = num_batches
        self.train, self.steps, self.seed, self.buffer = train, steps, seed, shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pipeline(self):  # noqa: ANN202 - a webdataset pipeline
        import webdataset as wds

        if self.train:
            # shards drawn with replacement, independently per rank and worker
            ds = wds.WebDataset(
                self.urls, resampled=True, nodesplitter=None, handler=_unreadable_shard
            )
            ds = ds.shuffle(self.buffer)
        else:
            ds = wds.WebDataset(
                self.urls,
                shardshuffle=False,
                nodesplitter=None,
                empty_check=False,
                handler=_unreadable_shard,
            )
        ds = ds.map(self.decode).batched(
            self.batch_size, collation_fn=_collate, partial=not self.train
        )
        if self.steps is not None:
            ds = ds.with_epoch(self.steps)
        return ds

    def __len__(self) -> int:
        """Batches per epoch over all loader workers (progress bars, Lightning's counts)."""
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self._pipeline()


class ShardDataModule(SSALDataModule):
    """Streams ``ssal data convert`` shards; batches are uint8 until they reach the device.

    Fixed-size sets (CIFAR, Fashion-MNIST) get the paper's shift/flip augmentation on the
    device (``shift_draw``, ``pad_mode`` as ``InMemoryDataModule``'s); image-folder sets get
    RandomResizedCrop [+ colour jitter] + flip per sample in the workers (``crop_scale``,
    ``color_jitter`` as ``ImageFolderDataModule``'s).
    """

    class_path = "ssal.data.ShardDataModule"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 4,
        image_size: int = 224,
        augment: bool = True,
        max_shift: int = 5,
        flip: bool = True,
        shuffle_buffer: int = 5000,
        seed: int = 0,
        shift_draw: str = "uniform",
        pad_mode: str = "reflect",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        color_jitter: list[float] | None = None,
    ) -> None:
        super().__init__()
        check_shift_options(shift_draw, pad_mode)
        self.save_hyperparameters()
        self.shift_draw, self.pad_mode = shift_draw, pad_mode
        self.crop_scale, self.color_jitter = tuple(crop_scale), color_jitter
        self.data_dir = data_dir
        self.meta = read_meta(data_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed, self.shuffle_buffer = num_workers, seed, shuffle_buffer
        self.augment, self.max_shift, self.flip = augment, max_shift, flip
        self.fixed = self.meta["kind"] == "fixed"
        self.image_size = self.meta["image_size"] if self.fixed else image_size
        self.num_classes = int(self.meta["num_classes"])
        self.in_channels = int(self.meta["in_channels"])
        self.class_names = list(self.meta["class_names"])
        self.mean, self.std = list(self.meta["mean"]), list(self.meta["std"])
        self.eval_crop_size = None if self.fixed else image_size

    def _urls(self, split: str) -> list[str]:
        entry = self.meta["splits"].get(split)
        if not entry or not entry["shards"]:
            raise UserError(f"{Path(self.data_dir) / META}: no {split!r} shards")
        return [str(Path(self.data_dir) / s) for s in entry["shards"]]

    def _transform(self, train: bool) -> Callable | None:
        if self.fixed:
            return None
        return folder_transforms(
            self.image_size, train, False, self.crop_scale, self.color_jitter if train else None
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        urls = self._urls(split)
        entry = self.meta["splits"][split]
        replicas, rank = self.replicas()
        batch = self.batch_size if train else self.eval_batch_size
        steps = None
        if train:
            workers = self.num_workers
            total = entry["samples"] // (batch * replicas)
            if total < 1:
                raise UserError(f"{split}: fewer images than one batch per device")
            steps = max(1, total // max(1, workers))  # with_epoch counts per worker
            num_batches = steps * max(1, workers)
        else:
            counts = dict(zip(entry["shards"], entry["samples_per_shard"], strict=True))
            names = entry["shards"][rank::replicas]  # every image once across ranks
            urls = urls[rank::replicas]
            workers = min(self.num_workers, len(urls))
            # each worker batches its own shards (webdataset splits shards by worker)
            step = max(1, workers)
            per_worker = [sum(counts[n] for n in names[w::step]) for w in range(step)]
            num_batches = sum(-(-n // batch) for n in per_worker)
        stream = _ShardStream(
            urls,
            _Decode(
                self.in_channels,
                self._transform(train),
                self.num_classes,
                self.image_size if self.fixed else None,
            ),
            batch,
            train,
            steps,
            self.seed + rank,
            self.shuffle_buffer,
            num_batches,
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def heldout_dataloader(self) -> DataLoader:
        return self._loader("heldout", False)

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Fixed-size sets: the paper's shift/flip on the device (folders crop in workers)."""
        if self.fixed and self.augment and (self.max_shift > 0 or self.flip):
            rng = self.epoch_generator(images.device, self.seed)
            return shift_flip(
                images, self.max_shift, self.flip, rng, self.shift_draw, self.pad_mode
            )
        return images
