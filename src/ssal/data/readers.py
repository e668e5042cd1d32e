"""Readers of the original dataset files: CIFAR-10/100 (python format) and Fashion-MNIST (idx).

Every reader checks what it reads (shapes, dtypes, label ranges) and ends in one clear
``ValueError``/``FileNotFoundError`` naming the file for anything else.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ssal.data.arrays import ImageArrays
from ssal.data.safe_pickle import RefusedGlobal, load_plain_pickle
from ssal.errors import UserError

__all__ = [
    "CIFAR_URLS",
    "DATASET_SHAPES",
    "DEFAULT_DATA_DIR",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "KNOWN_DATASETS",
    "canonical_name",
    "load_cifar",
    "load_dataset",
    "load_fashion_mnist",
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


CIFAR_URLS: dict[str, str] = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}

# (number of classes, channels, image side) of the in-memory datasets, known before loading so
# that models can be built from the data module's attributes before ``setup()`` runs.
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
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
                            raise UserError(f"unsafe path {member.name!r} in archive")
                    tar.extractall(tmp)
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            raise UserError(
                f"Could not extract {archive}: {err}. The archive is truncated or corrupt; "
                "delete it and download it again."
            ) from err
        extracted = tmp / folder
        if not extracted.is_dir():
            raise UserError(
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
    """Read one CIFAR python-format file into a dict with ``str`` keys, without running code.

    The files are Python 2 pickles of plain data; ``load_plain_pickle`` admits only that and
    NumPy's arrays, and refuses any other global a tampered file names.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR file {path} is missing. Delete the folder {path.parent} and extract the "
            "official archive again (https://www.cs.toronto.edu/~kriz/cifar.html)."
        )
    try:
        entry = load_plain_pickle(path)
    except RefusedGlobal as err:
        raise UserError(
            f"CIFAR file {path} names {err.qualified_name}, which no CIFAR file holds; it was "
            "refused and nothing ran. Delete the file and extract it again from the official "
            "archive (https://www.cs.toronto.edu/~kriz/cifar.html)."
        ) from None
    except Exception as err:  # garbled pickles can raise almost any exception type
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UserError(
            f"Could not read CIFAR file {path} ({type(err).__name__}: {reason}); it is truncated "
            "or not a CIFAR python-format file. Re-extract it from the official archive."
        ) from None
    if not isinstance(entry, dict):
        raise UserError(
            f"CIFAR file {path} holds a {type(entry).__name__}, expected a dict; it is not a "
            "CIFAR python-format file. Re-extract it from the official archive."
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in entry.items()}


def _require_key(entry: dict[str, Any], key: str, path: Path) -> Any:
    if key not in entry:
        raise UserError(
            f"CIFAR file {path} has no {key!r} entry (found {sorted(entry)[:10]}); it is not the "
            "expected CIFAR file. Re-extract it from the official archive."
        )
    return entry[key]


def _decode_names(names: Any, path: Path, key: str, expected: int) -> list[str]:
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise UserError(f"CIFAR meta file {path}: {key!r} must be a list of strings")
    try:
        decoded = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise UserError(f"CIFAR meta file {path}: {key!r} holds names that are not UTF-8") from None
    if len(decoded) != expected:
        raise UserError(
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
        raise UserError(
            f"CIFAR file {path}: 'data' must be an (N, 3072) array of 32x32 RGB images, got {shape}"
        )
    if data.dtype != np.uint8:
        raise UserError(f"CIFAR file {path}: 'data' must be uint8, got {data.dtype}")
    try:
        labels = np.asarray(labels_raw, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"CIFAR file {path}: {layout.label_key!r} is not a list of ints") from None
    if labels.ndim != 1 or len(labels) != len(data):
        raise UserError(
            f"CIFAR file {path}: {len(data)} images but {layout.label_key!r} has shape "
            f"{labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise UserError(
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
        raise UserError(f"Unknown CIFAR variant {name!r}; use 'cifar10' or 'cifar100'")
    if split not in ("train", "test"):
        raise UserError(f"Unknown split {split!r}; use 'train' or 'test'")
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


MAX_IDX_BYTES = 256 * 2**20
"""Most data an idx file may hold (Fashion-MNIST's training images are 47 MB): a header
declaring more is refused before anything is read, and a gzip file is decompressed only as
far as its header says."""


def _open_idx(path: Path) -> Any:
    with open(path, "rb") as f:
        packed = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if packed else open(path, "rb")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file of unsigned bytes (gzipped or not) into an array with ``ndim`` dims."""
    expected_magic = 0x0800 | ndim  # two zero bytes, type 0x08 (unsigned byte), number of dims
    header = 4 + 4 * ndim
    try:
        with _open_idx(path) as f:
            head = f.read(header)
            if len(head) < header:
                raise UserError(f"{path} is too short ({len(head)} bytes) to be an idx file")
            magic = int.from_bytes(head[:4], "big")
            if magic != expected_magic:
                raise UserError(
                    f"{path} has magic number {magic:#010x}, expected {expected_magic:#010x} (idx "
                    f"file of unsigned bytes with {ndim} dimension(s)); it is not the right idx "
                    "file or is corrupt."
                )
            dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            count = math.prod(dims)
            if count > MAX_IDX_BYTES:
                raise UserError(
                    f"{path} declares shape {tuple(dims)} ({count} bytes of data), more than an "
                    f"idx file of this dataset holds; it is corrupt. {_FASHION_HELP}"
                )
            raw = f.read(count + 1)  # one byte more: trailing data is an error too
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"Could not read {path} ({err}); the file is truncated or corrupt. {_FASHION_HELP}"
        ) from None
    if len(raw) != count:
        held = f"{len(raw)} bytes" if len(raw) <= count else "more"
        raise UserError(
            f"{path} declares shape {tuple(dims)} ({count} bytes of data) but holds {held}; the "
            f"file is truncated or corrupt. {_FASHION_HELP}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=count).reshape(dims).copy()


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
        raise UserError(f"Unknown split {split!r}; use 'train' or 'test'")
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
        raise UserError(f"{image_path} holds images of size {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise UserError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise UserError(f"{label_path} has label {labels.max()}, expected 0..9")
    return ImageArrays(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels),
        class_names=list(FASHION_MNIST_CLASSES),
    )


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}.get(
        key, key
    )
    if key not in KNOWN_DATASETS:
        raise UserError(f"Unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
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
    key = canonical_name(name)
    if key == "fashion-mnist":
        return load_fashion_mnist(data_dir, split)
    return load_cifar(DEFAULT_DATA_DIR if data_dir is None else data_dir, key, split, download)
