"""Datasets, splits, GPU-side augmentation and Lightning data modules for SSAL.

Small datasets (CIFAR-10/100, Fashion-MNIST) are held in memory as uint8 tensors and served
in whole batches, so no per-sample Python code runs; augmentation (random reflect-padded
shifts and horizontal flips, as in the SSAL paper) and normalisation happen on the device the
batch is moved to. Large folder datasets (ImageNet) use torchvision's ``ImageFolder`` with CPU
decoding and cropping, and are normalised on the device as well.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "CIFAR_URLS",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KNOWN_DATASETS",
    "BatchIndexDataset",
    "EpochBatchSampler",
    "ImageArrays",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "batch_loader",
    "channel_stats",
    "load_cifar",
    "load_dataset",
    "load_fashion_mnist",
    "normalize",
    "shift_flip",
    "stratified_split",
]

KNOWN_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion-mnist")
"""Names accepted by :func:`load_dataset` and :class:`InMemoryDataModule`."""

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian-style ``dataset-fashion-mnist`` package installs the original files."""

DEFAULT_DATA_DIR = Path("data")
"""Relative folder searched when no ``data_dir`` is given."""

FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

IMAGENET_MEAN: list[float] = [0.485, 0.456, 0.406]
IMAGENET_STD: list[float] = [0.229, 0.224, 0.225]

CIFAR_URLS: dict[str, str] = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}

# (number of classes, channels, image side) of the in-memory datasets, known before loading so
# that models can be built from the data module's attributes before ``setup()`` runs.
_DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "fashion-mnist": (10, 1, 28),
}


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


_CIFAR_LAYOUTS: dict[str, _CifarLayout] = {
    "cifar10": _CifarLayout(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": _CifarLayout(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
    ),
}


# --------------------------------------------------------------------------------------------
# In-memory image arrays
# --------------------------------------------------------------------------------------------


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
            raise ValueError(
                "ImageArrays.images must be a uint8 tensor of shape (N, C, H, W), got "
                f"{self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise ValueError(
                "ImageArrays.labels must be an int64 tensor of shape (N,), got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise ValueError(
                f"ImageArrays has {len(self.images)} images but {len(self.labels)} labels"
            )
        if not self.class_names:
            raise ValueError("ImageArrays.class_names must not be empty")
        if len(self.labels) > 0:
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= len(self.class_names):
                raise ValueError(
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


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def _extract_tar(archive: Path, dest: Path, folder: str) -> None:
    """Extract ``archive`` so that ``dest/folder`` appears atomically (safe for parallel ranks)."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # pragma: no cover - Python < 3.10.12 has no extraction filters
                    for member in tar.getmembers():
                        name = Path(member.name)
                        if name.is_absolute() or ".." in name.parts:
                            raise ValueError(f"unsafe path {member.name!r} in archive")
                    tar.extractall(tmp)
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            raise ValueError(
                f"Could not extract {archive}: {err}. The archive is truncated or corrupt; "
                "delete it and download it again."
            ) from err
        extracted = tmp / folder
        if not extracted.is_dir():
            raise ValueError(
                f"Archive {archive} does not contain the folder {folder!r}; it is not the "
                "expected dataset archive."
            )
        if not (dest / folder).exists():
            try:
                os.replace(extracted, dest / folder)
            except OSError:
                if not (dest / folder).is_dir():  # someone else did not win the race either
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpickle_cifar(path: Path) -> dict[str, Any]:
    """Read one CIFAR python-format file into a dict with ``str`` keys."""
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR file {path} is missing. Delete the folder {path.parent} and extract the "
            "official archive again (https://www.cs.toronto.edu/~kriz/cifar.html)."
        )
    try:
        with open(path, "rb") as f:
            # The official CIFAR "python version" files are Python 2 pickles by format; there is
            # no other way to read them. Only load copies of the official dataset.
            entry = pickle.load(f, encoding="bytes")
    except Exception as err:  # garbled pickles can raise almost any exception type
        raise ValueError(
            f"Could not read CIFAR file {path} ({type(err).__name__}: {err}); it is truncated or "
            "not a CIFAR python-format file. Re-extract it from the official archive."
        ) from err
    if not isinstance(entry, dict):
        raise ValueError(
            f"CIFAR file {path} holds a {type(entry).__name__}, expected a dict; it is not a "
            "CIFAR python-format file. Re-extract it from the official archive."
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in entry.items()}


def _require_key(entry: dict[str, Any], key: str, path: Path) -> Any:
    if key not in entry:
        raise ValueError(
            f"CIFAR file {path} has no {key!r} entry (found {sorted(entry)}); it is not the "
            "expected CIFAR file. Re-extract it from the official archive."
        )
    return entry[key]


def _decode_names(names: Any, path: Path, key: str, expected: int) -> list[str]:
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"CIFAR meta file {path}: {key!r} must be a list of strings")
    decoded = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    if len(decoded) != expected:
        raise ValueError(
            f"CIFAR meta file {path}: {key!r} lists {len(decoded)} classes, expected {expected}"
        )
    return decoded


def _read_cifar_batch(path: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (n, 3, 32, 32), labels int64 (n,)) from one CIFAR batch file."""
    entry = _unpickle_cifar(path)
    data = _require_key(entry, "data", path)
    labels_raw = _require_key(entry, layout.label_key, path)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", type(data).__name__)
        raise ValueError(
            f"CIFAR file {path}: 'data' must be an (N, 3072) array of 32x32 RGB images, got {shape}"
        )
    if data.dtype != np.uint8:
        raise ValueError(f"CIFAR file {path}: 'data' must be uint8, got {data.dtype}")
    try:
        labels = np.asarray(labels_raw, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"CIFAR file {path}: {layout.label_key!r} is not a list of ints") from err
    if labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(
            f"CIFAR file {path}: {len(data)} images but {layout.label_key!r} has shape "
            f"{labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise ValueError(
            f"CIFAR file {path}: labels span [{labels.min()}, {labels.max()}], expected "
            f"0..{layout.num_classes - 1}"
        )
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(
    data_dir: str | Path,
    name: Literal["cifar10", "cifar100"],
    split: Literal["train", "test"] = "train",
    download: bool = False,
) -> ImageArrays:
    """Load CIFAR-10 or CIFAR-100 from the official python-format folder under ``data_dir``.

    Reads ``data_dir/cifar-10-batches-py`` or ``data_dir/cifar-100-python``. If the folder is
    absent but the official ``.tar.gz`` archive is in ``data_dir`` it is extracted first; with
    ``download=True`` the archive is fetched when neither exists. Archive checksums are not
    checked; instead every file's contents (shapes, dtypes, label ranges) are validated.
    CIFAR-100 uses the 100 fine labels.

    Returns:
        ImageArrays with images uint8 (N, 3, 32, 32) in RGB order and labels int64 (N,).
    """
    if name not in _CIFAR_LAYOUTS:
        raise ValueError(f"Unknown CIFAR variant {name!r}; use 'cifar10' or 'cifar100'")
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; use 'train' or 'test'")
    layout = _CIFAR_LAYOUTS[name]
    root = Path(data_dir).expanduser()
    folder = root / layout.folder
    archive = root / layout.archive
    if not folder.is_dir():
        if not archive.is_file() and download:
            from torchvision.datasets.utils import download_url

            root.mkdir(parents=True, exist_ok=True)
            download_url(CIFAR_URLS[name], str(root), layout.archive)
        if archive.is_file():
            _extract_tar(archive, root, layout.folder)
        else:
            raise FileNotFoundError(
                f"{name} not found: expected the folder {folder} (or the archive {archive}). "
                f"Download {CIFAR_URLS[name]} into {root}, or pass download=True."
            )

    names = _require_key(
        _unpickle_cifar(folder / layout.meta_file), layout.names_key, folder / layout.meta_file
    )
    class_names = _decode_names(
        names, folder / layout.meta_file, layout.names_key, layout.num_classes
    )
    files = layout.train_files if split == "train" else layout.test_files
    parts = [_read_cifar_batch(folder / f, layout) for f in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ImageArrays(
        images=torch.from_numpy(np.require(images, requirements=["C", "W"])),
        labels=torch.from_numpy(np.require(labels, requirements=["C", "W"])),
        class_names=class_names,
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (idx format)
# --------------------------------------------------------------------------------------------

_FASHION_HELP = (
    "Install it with `apt-get install dataset-fashion-mnist` (files land in "
    f"{DEFAULT_FASHION_MNIST_DIR}) or download the four *-ubyte.gz files from "
    "https://github.com/zalandoresearch/fashion-mnist into your data_dir."
)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file of unsigned bytes (gzipped or not) into an array with ``ndim`` dims."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise ValueError(
            f"Could not read {path} ({err}); the file is truncated or corrupt. {_FASHION_HELP}"
        ) from err
    expected_magic = 0x0800 | ndim  # two zero bytes, type 0x08 (unsigned byte), number of dims
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is too short ({len(raw)} bytes) to be an idx file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path} has magic number {magic:#010x}, expected {expected_magic:#010x} (idx file of "
            f"unsigned bytes with {ndim} dimension(s)); it is not the right idx file or is corrupt."
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = math.prod(dims)
    if len(raw) - header != count:
        raise ValueError(
            f"{path} declares shape {tuple(dims)} ({count} bytes of data) but holds "
            f"{len(raw) - header} bytes; the file is truncated or corrupt. {_FASHION_HELP}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims).copy()


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(
    data_dir: str | Path | None = None, split: Literal["train", "test"] = "train"
) -> ImageArrays:
    """Load Fashion-MNIST from the four original idx files (``.gz`` or uncompressed).

    Searched folders: ``data_dir`` then ``data_dir/fashion-mnist`` when given; otherwise
    ``./data/fashion-mnist`` then ``/usr/share/datasets/fashion-mnist``.

    Returns:
        ImageArrays with images uint8 (N, 1, 28, 28) and labels int64 (N,), 10 classes.
    """
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; use 'train' or 'test'")
    if data_dir is not None:
        candidates = [Path(data_dir).expanduser(), Path(data_dir).expanduser() / "fashion-mnist"]
    else:
        candidates = [DEFAULT_DATA_DIR / "fashion-mnist", DEFAULT_FASHION_MNIST_DIR]
    prefix = "train" if split == "train" else "t10k"
    image_stem, label_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    for directory in candidates:
        image_path, label_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
        if image_path is not None and label_path is not None:
            break
    else:
        searched = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files {image_stem}.gz and {label_stem}.gz not found in "
            f"{searched}. {_FASHION_HELP}"
        )
    images = _read_idx(image_path, ndim=3)
    labels = _read_idx(label_path, ndim=1).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{image_path} holds images of size {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise ValueError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{label_path} has label {labels.max()}, expected 0..9")
    return ImageArrays(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels),
        class_names=list(FASHION_MNIST_CLASSES),
    )


def _canonical_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}.get(
        key, key
    )
    if key not in KNOWN_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    return key


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    split: Literal["train", "test"] = "train",
    download: bool = False,
) -> ImageArrays:
    """Load one split of ``"cifar10"``, ``"cifar100"`` or ``"fashion-mnist"`` into memory.

    For CIFAR, ``data_dir`` defaults to ``./data``; ``download`` only applies to CIFAR.
    """
    key = _canonical_name(name)
    if key == "fashion-mnist":
        return load_fashion_mnist(data_dir, split)
    return load_cifar(DEFAULT_DATA_DIR if data_dir is None else data_dir, key, split, download)


# --------------------------------------------------------------------------------------------
# Splits and statistics
# --------------------------------------------------------------------------------------------


def _heldout_count(heldout: int | float, total: int) -> int:
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float)):
        raise ValueError(f"heldout must be a count or a fraction, got {heldout!r}")
    if not math.isfinite(heldout) or heldout < 0:
        raise ValueError(f"heldout must be >= 0, got {heldout!r}")
    if heldout < 1:
        count = round(heldout * total)
    else:
        if heldout != int(heldout):
            raise ValueError(
                f"heldout={heldout!r} is neither a fraction below 1 nor a whole number of samples"
            )
        count = int(heldout)
    if count >= total and count > 0:
        raise ValueError(
            f"heldout={heldout!r} would hold out {count} of {total} samples; leave at least one "
            "sample for training"
        )
    return count


def _allocate(counts: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Split ``k`` held-out samples over classes proportionally to ``counts``.

    Largest-remainder rounding of the fair shares ``k * n_c / N`` (seeded random tie-break),
    then, where possible, every class keeps at least one training sample and every class with
    at least two samples gives at least one, taking from the classes furthest above their share.
    """
    sizes = counts.tolist()
    total = sum(sizes)
    quota = [k * n / total for n in sizes]
    alloc = [math.floor(q) for q in quota]
    tie = torch.rand(len(sizes), generator=generator, dtype=torch.float64).tolist()
    by_remainder = sorted(range(len(sizes)), key=lambda i: (quota[i] - alloc[i], tie[i]))
    for i in by_remainder[::-1][: k - sum(alloc)]:
        alloc[i] += 1

    def surplus(i: int) -> tuple[float, float]:
        return (alloc[i] - quota[i], tie[i])

    # Leave every class a training sample where possible.
    cap = [n - 1 for n in sizes]
    excess = 0
    for i, c in enumerate(cap):
        if alloc[i] > max(c, 0):
            excess += alloc[i] - max(c, 0)
            alloc[i] = max(c, 0)
    for _ in range(excess):
        room = [i for i in range(len(sizes)) if alloc[i] < cap[i]]
        if not room:  # heldout larger than the samples that can spare one: use any sample left
            room = [i for i in range(len(sizes)) if alloc[i] < sizes[i]]
        alloc[min(room, key=surplus)] += 1
    # Every class with >= 2 samples contributes, when there are enough to go round.
    eligible = [i for i, n in enumerate(sizes) if n >= 2]
    if k >= len(eligible):
        for i in eligible:
            if alloc[i] == 0:
                donors = [j for j in range(len(sizes)) if alloc[j] >= 2]
                if not donors:
                    break
                alloc[max(donors, key=surplus)] -= 1
                alloc[i] += 1
    return torch.tensor(alloc, dtype=torch.long)


def stratified_split(
    labels: torch.Tensor, heldout: int | float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into a training part and a stratified held-out part.

    Args:
        labels: int tensor (N,) of class indices >= 0.
        heldout: a fraction in [0, 1) of the samples, or a whole count >= 1.
        seed: seeds the choice of samples; the same inputs give the same split.

    Returns:
        ``(train_idx, heldout_idx)``: sorted int64 index tensors, disjoint, together covering
        ``0..N-1``. Each class contributes proportionally to its size (at least one sample when
        the held-out size allows).
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise ValueError("labels must be a 1-D tensor of class indices")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    total = len(labels)
    if total == 0:
        raise ValueError("labels is empty; nothing to split")
    labels = labels.detach().to("cpu", torch.long)
    if int(labels.min()) < 0:
        raise ValueError("labels must be >= 0")
    k = _heldout_count(heldout, total)
    everything = torch.arange(total)
    if k == 0:
        return everything, torch.empty(0, dtype=torch.long)

    generator = torch.Generator().manual_seed(int(seed))
    counts = torch.bincount(labels)
    alloc = _allocate(counts, k, generator)
    # Random order within each class: shuffle all, then stable-sort by label.
    perm = torch.randperm(total, generator=generator)
    order = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[order]
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(total) - starts[sorted_labels]
    take = rank_in_class < alloc[sorted_labels]
    heldout_idx = order[take].sort().values
    train_idx = order[~take].sort().values
    return train_idx, heldout_idx


def channel_stats(images: torch.Tensor, chunk_size: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W) scaled to [0, 1].

    Sums are accumulated exactly in int64 over chunks of ``chunk_size`` images, so only one
    small chunk is ever converted.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"channel_stats needs uint8 images (N, C, H, W), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if len(images) == 0:
        raise ValueError("channel_stats needs at least one image")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    channels = images.shape[1]
    sums = [0] * channels
    squares = [0] * channels
    for start in range(0, len(images), chunk_size):
        chunk = images[start : start + chunk_size].to(torch.int64)
        s = chunk.sum(dim=(0, 2, 3)).tolist()
        q = (chunk * chunk).sum(dim=(0, 2, 3)).tolist()
        sums = [a + b for a, b in zip(sums, s, strict=True)]
        squares = [a + b for a, b in zip(squares, q, strict=True)]
    n = images.numel() // channels
    means = [s / (n * 255.0) for s in sums]
    # n^2 * var * 255^2 = n * sum(x^2) - sum(x)^2, computed exactly with Python integers.
    stds = [
        math.sqrt(max(n * q - s * s, 0)) / (n * 255.0) for s, q in zip(sums, squares, strict=True)
    ]
    return means, stds


# --------------------------------------------------------------------------------------------
# Augmentation and normalisation (device-agnostic, vectorised)
# --------------------------------------------------------------------------------------------


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-(size-1), 2*(size-1)] into [0, size) by reflection (no edge repeat)."""
    last = size - 1
    return last - (last - index.abs()).abs()


def shift_flip(
    images: torch.Tensor,
    max_shift: int = 5,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Randomly shift and horizontally flip every image of a batch, independently.

    Equivalent to reflect-padding each image (N, C, H, W) by ``max_shift`` on all sides,
    cropping an H x W window at a uniform random offset in ``[0, 2*max_shift]`` per axis (a
    shift in ``[-max_shift, max_shift]``), then flipping left-right with probability 0.5. Runs as
    one gather on the tensor's device; works for any dtype. ``generator`` may live on the CPU
    or on the images' device.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    if images.ndim != 4:
        raise ValueError(f"shift_flip needs a batch (N, C, H, W), got shape {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    n, c, h, w = images.shape
    if max_shift >= min(h, w):
        raise ValueError(
            f"max_shift={max_shift} must be smaller than the image size {h}x{w} for reflect padding"
        )
    if n == 0 or (max_shift == 0 and not flip):
        return images.clone()
    device = images.device
    rng_device = generator.device if generator is not None else device
    span = 2 * max_shift + 1
    top = torch.randint(0, span, (n,), generator=generator, device=rng_device).to(device)
    left = torch.randint(0, span, (n,), generator=generator, device=rng_device).to(device)
    rows = top[:, None] - max_shift + torch.arange(h, device=device)  # (n, h) padded coords
    cols = left[:, None] - max_shift + torch.arange(w, device=device)  # (n, w)
    if flip:
        flipped = torch.rand(n, generator=generator, device=rng_device).to(device) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    rows, cols = _reflect(rows, h), _reflect(cols, w)
    source = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, source).view(n, c, h, w)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Return ``(images / 255 - mean) / std`` per channel as a float tensor.

    ``images`` is (N, C, H, W) uint8, or float on the same 0..255 scale; ``mean``/``std`` have
    C entries on the [0, 1] scale. Floating inputs keep their dtype, integers become float32.
    """
    if images.ndim != 4:
        raise ValueError(f"normalize needs a batch (N, C, H, W), got shape {tuple(images.shape)}")
    dtype = images.dtype if images.is_floating_point() else torch.float32
    channels = images.shape[1]
    mean_t = torch.as_tensor(mean, dtype=dtype, device=images.device).flatten()
    std_t = torch.as_tensor(std, dtype=dtype, device=images.device).flatten()
    if len(mean_t) != channels or len(std_t) != channels:
        raise ValueError(
            f"mean and std need {channels} values (one per channel), got {len(mean_t)} and "
            f"{len(std_t)}"
        )
    scale = (1.0 / (255.0 * std_t)).view(1, channels, 1, 1)
    shift = (mean_t / std_t).view(1, channels, 1, 1)
    return images.to(dtype) * scale - shift


# --------------------------------------------------------------------------------------------
# Batched in-memory loading
# --------------------------------------------------------------------------------------------


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
            raise ValueError(f"dataset_size must be >= 0, got {dataset_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
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


# --------------------------------------------------------------------------------------------
# Lightning data modules
# --------------------------------------------------------------------------------------------


class _DeviceStats:
    """Caches mean/std tensors per device so normalising a batch does not copy them each time."""

    def __init__(self) -> None:
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(
        self, mean: list[float], std: list[float], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, torch.float32)
        if key not in self._cache:
            self._cache[key] = (
                torch.tensor(mean, dtype=torch.float32, device=device),
                torch.tensor(std, dtype=torch.float32, device=device),
            )
        return self._cache[key]


def _replicas(module: lightning.LightningDataModule) -> tuple[int, int]:
    trainer = module.trainer
    if trainer is None:
        return 1, 0
    return int(trainer.world_size), int(trainer.global_rank)


def _is_training(module: lightning.LightningDataModule) -> bool:
    trainer = module.trainer
    return trainer is not None and bool(trainer.training)


class InMemoryDataModule(lightning.LightningDataModule):
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
        normalization: "channel" (mean/std per channel of the training part) or "unit" (scale
            to [0, 1] only).
        train_size: if set, a stratified subsample of this many training images is used.
        num_workers: DataLoader workers (0 is usually fastest for in-memory data).
        device_resident: hold the uint8 arrays on the GPU (None: when training on CUDA
            with no workers).
    """

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
        normalization: str = "channel",
        train_size: int | None = None,
        num_workers: int = 0,
        device_resident: bool | None = None,
    ) -> None:
        super().__init__()
        self.dataset = _canonical_name(dataset)
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"batch_size and eval_batch_size must be >= 1, got {batch_size} and "
                f"{eval_batch_size}"
            )
        if normalization not in ("channel", "unit"):
            raise ValueError(f"normalization must be 'channel' or 'unit', got {normalization!r}")
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        if heldout < 0:
            raise ValueError(f"heldout must be >= 0, got {heldout}")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be >= 1 or None, got {train_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.heldout = heldout
        self.seed = seed
        self.augment = augment
        self.max_shift = max_shift
        self.flip = flip
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
        self._device_stats = _DeviceStats()

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
            raise ValueError(
                f"train_size={self.train_size} exceeds the {len(full)} training images of "
                f"{self.dataset}"
            )
        train_idx, heldout_idx = stratified_split(full.labels, self.heldout, self.seed + 1)
        train = full.subset(train_idx)
        if self.normalization == "channel":
            mean, std = channel_stats(train.images)
            if min(std) <= 0:
                raise ValueError(
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
        return _DATASET_SHAPES[self.dataset][0]

    @property
    def in_channels(self) -> int:
        """Image channels: 3 for CIFAR, 1 for Fashion-MNIST."""
        if self.train_arrays is not None:
            return int(self.train_arrays.images.shape[1])
        return _DATASET_SHAPES[self.dataset][1]

    @property
    def image_size(self) -> int:
        """Side of the square images (32 for CIFAR, 28 for Fashion-MNIST)."""
        if self.train_arrays is not None:
            return int(self.train_arrays.images.shape[-1])
        return _DATASET_SHAPES[self.dataset][2]

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
        replicas, rank = _replicas(self)
        if train and len(arrays) // replicas < batch_size:
            raise ValueError(
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

    def test_dataloader(self) -> DataLoader:
        """The test split, in order."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order."""
        return self.val_dataloader()

    def heldout_dataloader(self) -> DataLoader:
        """The held-out part of the training split, in order, without augmentation."""
        self._ready()
        assert self.heldout_arrays is not None
        if len(self.heldout_arrays) == 0:
            raise ValueError("no held-out data: set heldout to a fraction > 0 or a count >= 1")
        return self._loader(self.heldout_arrays, self.eval_batch_size, train=False)

    # ---- device-side processing -------------------------------------------------------------

    def prepare_batch(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """Turn a uint8 batch (B, C, H, W) on any device into normalised float32 (B, C, H, W),
        with random shifts/flips when ``train`` and augmentation is enabled."""
        self._ready()
        assert self._mean is not None and self._std is not None
        if train and self.augment and (self.max_shift > 0 or self.flip):
            images = shift_flip(images, self.max_shift, self.flip)
        mean, std = self._device_stats.get(self._mean, self._std, images.device)
        return normalize(images, mean, std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise (and, while training, augment) the image tensor of a transferred batch."""
        images, labels = batch[0], batch[1]
        return self.prepare_batch(images, train=_is_training(self)), labels


def _with_transform(dataset: Any, transform: Any) -> Any:
    """Shallow copy of an ImageFolder sharing its file list but using another transform."""
    import copy

    clone = copy.copy(dataset)
    clone.transform = transform
    return clone


def _read_file(path: str) -> torch.Tensor:
    """A file's bytes as a uint8 tensor (what ``decode_jpeg`` takes), in ordinary memory:
    ``torchvision.io.read_file`` maps the file, and a mapped tensor cannot travel back from a
    DataLoader worker (the loader hangs)."""
    data = Path(path).read_bytes()
    if not data:
        raise ValueError(f"{path}: empty image file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _collate_encoded(
    samples: Sequence[tuple[torch.Tensor, int]],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Encoded images stay a list (their lengths differ); labels become one tensor."""
    return [s[0] for s in samples], torch.tensor([s[1] for s in samples], dtype=torch.long)


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode_images(encoded: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode image files (uint8 byte tensors on the CPU) to RGB uint8 (3, H, W) on ``device``.

    JPEGs are decoded in one batched call on ``device`` (nvJPEG on CUDA); other formats, and
    JPEGs the device decoder refuses (CMYK, progressive on some builds), on the CPU.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    rgb = ImageReadMode.RGB
    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, d in enumerate(encoded) if _is_jpeg(d)]
    if jpegs:
        try:
            for i, img in zip(
                jpegs,
                decode_jpeg([encoded[i] for i in jpegs], mode=rgb, device=device),
                strict=True,
            ):
                out[i] = img
        except RuntimeError:  # one bad file fails the batch: decode them one by one below
            pass
    for i, img in enumerate(out):
        if img is None:
            out[i] = _decode_on_cpu(encoded[i]).to(device, non_blocking=True)
    return out  # type: ignore[return-value]


def _decode_on_cpu(data: torch.Tensor) -> torch.Tensor:
    """One image to RGB uint8 (3, H, W): torchvision's decoders, else PIL (BMP, TIFF, ...).
    16-bit PNGs are scaled to 8 bits (the CPU path's PIL conversion clips them at 255, and so
    does the PIL fallback here)."""
    import io

    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    try:
        img = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        from PIL import Image, UnidentifiedImageError

        try:
            pil = Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode a training image ({exc})") from None
        img = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    if img.dtype != torch.uint8:
        img = F.to_dtype(img, torch.uint8, scale=True)
    return img


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of an Inception-style random crop (torchvision's
    ``RandomResizedCrop`` rule: area share in ``scale``, log-uniform aspect ``ratio``, 10 tries
    then a centre crop), drawn from ``generator``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    aspect = width / height
    if aspect < min(ratio):
        w, h = width, round(width / min(ratio))
    elif aspect > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ImageFolderDataModule(lightning.LightningDataModule):
    """ImageNet-style ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` folders.

    Images are decoded and cropped on the CPU into uint8 (B, 3, S, S) batches (train:
    RandomResizedCrop + horizontal flip; eval: resize to S/0.875 + centre crop) and normalised
    on the device after transfer. With ``decode_on_device`` the training loader's workers only
    read the files; decoding (nvJPEG on a GPU), cropping and flipping happen on the device after
    transfer, which frees the CPU cores that otherwise bound an ImageNet epoch.

    Args:
        data_dir: root folder holding ``train/`` and ``val/``.
        image_size: side S of the crops.
        batch_size: training batch size (incomplete last batch dropped).
        eval_batch_size: batch size for validation, test, held-out and prediction.
        num_workers: DataLoader worker processes.
        heldout: fraction (< 1) or count (>= 1) of ``train/`` held out, stratified.
        seed: seeds the held-out split and the shuffling.
        mean: per-channel mean on the [0, 1] scale (ImageNet's by default).
        std: per-channel std on the [0, 1] scale (ImageNet's by default).
        decode_on_device: decode and augment training images on the training device.
    """

    def __init__(
        self,
        data_dir: str,
        image_size: int = 224,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 8,
        heldout: float = 0.0,
        seed: int = 0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        decode_on_device: bool = False,
    ) -> None:
        super().__init__()
        if image_size < 1 or batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"image_size, batch_size and eval_batch_size must be >= 1, got {image_size}, "
                f"{batch_size}, {eval_batch_size}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if heldout < 0:
            raise ValueError(f"heldout must be >= 0, got {heldout}")
        mean = list(IMAGENET_MEAN) if mean is None else [float(m) for m in mean]
        std = list(IMAGENET_STD) if std is None else [float(s) for s in std]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each with std > 0, got {mean}, {std}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.heldout = heldout
        self.seed = seed
        self.mean = mean
        self.std = std
        self.decode_on_device = decode_on_device
        self._generator: torch.Generator | None = None
        self.in_channels = 3
        self.train_set: Dataset | None = None
        self.heldout_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._class_names: list[str] | None = None
        self._device_stats = _DeviceStats()

    def _transforms(self) -> tuple[Any, Any]:
        from torchvision.transforms import v2

        tail = [v2.ToImage(), v2.ToDtype(torch.uint8, scale=True), v2.ToPureTensor()]
        train = v2.Compose(
            [v2.RandomResizedCrop(self.image_size, antialias=True), v2.RandomHorizontalFlip()]
            + tail
        )
        evaluation = v2.Compose(
            [
                v2.Resize(int(self.image_size / 0.875), antialias=True),
                v2.CenterCrop(self.image_size),
            ]
            + tail
        )
        return train, evaluation

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
        train_tf, eval_tf = self._transforms()
        train_full = ImageFolder(str(root / "train"), transform=train_tf)
        val = ImageFolder(str(root / "val"), transform=eval_tf)
        if train_full.classes != val.classes:
            missing = sorted(set(train_full.classes) ^ set(val.classes))
            raise ValueError(
                f"class folders differ between {root / 'train'} and {root / 'val'} "
                f"(e.g. {missing[:5]}); {layout}"
            )
        targets = torch.tensor(train_full.targets, dtype=torch.long)
        train_idx, heldout_idx = stratified_split(targets, self.heldout, self.seed)
        train_source = train_full
        if self.decode_on_device:  # workers read bytes; decoding waits for the device
            train_source = _with_transform(train_full, None)
            train_source.loader = _read_file
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
            drop_last=train,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=_collate_encoded if train and self.decode_on_device else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, randomly cropped and flipped training batches (uint8)."""
        self.setup()
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """Centre-cropped ``val/`` batches (uint8)."""
        self.setup()
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()

    def heldout_dataloader(self) -> DataLoader:
        """Centre-cropped held-out part of ``train/``, in order."""
        self.setup()
        assert self.heldout_set is not None
        if len(self.heldout_set) == 0:  # type: ignore[arg-type]
            raise ValueError("no held-out data: set heldout to a fraction > 0 or a count >= 1")
        return self._loader(self.heldout_set, self.eval_batch_size, train=False)

    def prepare_batch(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Normalise a uint8 batch (B, 3, S, S) on its device into float32 (B, 3, S, S).

        ``train`` is accepted for symmetry with :class:`InMemoryDataModule`; augmentation
        already happened on the CPU.
        """
        mean, std = self._device_stats.get(self.mean, self.std, images.device)
        return normalize(images, mean, std)

    def crop_batch(self, images: Sequence[torch.Tensor], train: bool) -> torch.Tensor:
        """Decoded (3, H, W) images to one uint8 (B, 3, S, S) batch on their device, with the
        CPU path's transforms: RandomResizedCrop + flip (``train``) or resize + centre crop."""
        from torchvision.transforms.v2 import functional as F

        size = [self.image_size, self.image_size]
        out = []
        for img in images:
            if train:
                g = self._crop_generator()
                top, left, h, w = random_resized_crop_box(img.shape[-2], img.shape[-1], g)
                img = F.resized_crop(img, top, left, h, w, size, antialias=True)
                if torch.rand((), generator=g) < 0.5:
                    img = F.horizontal_flip(img)
            else:
                img = F.resize(img, int(self.image_size / 0.875), antialias=True)
                img = F.center_crop(img, size)
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
            images = self.crop_batch(decode_images(batch[0], device), train=True)
            return images, batch[1].to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise the image tensor of a transferred batch."""
        images, labels = batch[0], batch[1]
        return self.prepare_batch(images, train=_is_training(self)), labels
