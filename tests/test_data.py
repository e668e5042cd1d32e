"""Tests for ssal.data: loaders on files in the original formats, splits, augmentation, modules."""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssal import data as D
from ssal.data import (
    BatchIndexDataset,
    EpochBatchSampler,
    ImageArrays,
    ImageFolderDataModule,
    InMemoryDataModule,
    batch_loader,
    channel_stats,
    load_cifar,
    load_dataset,
    load_fashion_mnist,
    normalize,
    shift_flip,
    stratified_split,
)
from tests.conftest import have_fashion_mnist, require

# --------------------------------------------------------------------------------------------
# Helpers writing the original file formats
# --------------------------------------------------------------------------------------------


def pixel_rows(first: int, count: int) -> np.ndarray:
    """CIFAR rows (count, 3072) whose value at flat position k of image i is known.

    Flat position k = c * 1024 + y * 32 + x (red, green, blue planes, each row-major).
    """
    i = np.arange(first, first + count)[:, None]
    k = np.arange(3072)[None, :]
    return ((i * 7 + k * 13) % 251).astype(np.uint8)


def expected_pixel(i: int, c: int, y: int, x: int) -> int:
    return (i * 7 + (c * 1024 + y * 32 + x) * 13) % 251


def _py2_str(b: bytes) -> bytes:
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(b)) + b  # BINSTRING


def py2_pickle(obj: object) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle (protocol 2) wrote the official CIFAR files:
    strings as py2 ``str`` and numpy arrays via ``numpy.core.multiarray._reconstruct``."""

    def enc(o: object) -> bytes:
        if isinstance(o, bytes):
            return _py2_str(o)
        if isinstance(o, bool):
            return b"\x88" if o else b"\x89"
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        if isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
            out += _py2_str(b"b") + b"\x87R("
            out += b"K\x01(" + b"".join(enc(int(d)) for d in o.shape) + b"t"
            out += b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R("
            out += b"K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            out += b"\x89" + _py2_str(o.tobytes()) + b"tb"
            return out
        raise TypeError(type(o))

    return b"\x80\x02" + enc(obj) + b"."


CIFAR100_FINE = [f"fine_{i:02d}".encode() for i in range(100)]
CIFAR100_COARSE = [f"coarse_{i:02d}".encode() for i in range(20)]
CIFAR10_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """Write cifar-100-python/{train,test,meta} like the official files (bytes keys)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, first, n in (("train", 0, n_train), ("test", 1000, n_test)):
        fine = [(i * 37) % 100 for i in range(first, first + n)]
        entry = {
            b"filenames": [f"img_{i}.png".encode() for i in range(first, first + n)],
            b"batch_label": f"{name} batch".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": pixel_rows(first, n),
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {b"fine_label_names": CIFAR100_FINE, b"coarse_label_names": CIFAR100_COARSE}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 10) -> Path:
    """Write cifar-10-batches-py/ with Python-2-style pickles, as in the official archive."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [(f"data_batch_{b + 1}", b * per_batch, per_batch) for b in range(5)]
    for name, first, n in [*batches, ("test_batch", 1000, n_test)]:
        entry = {
            b"batch_label": name.encode(),
            b"labels": [(3 * i + 1) % 10 for i in range(first, first + n)],
            b"data": pixel_rows(first, n),
            b"filenames": [f"img_{i}.png".encode() for i in range(first, first + n)],
        }
        (folder / name).write_bytes(py2_pickle(entry))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return folder


def write_idx(path: Path, array: np.ndarray, compress: bool = True, magic: int | None = None):
    code = 0x0800 | array.ndim if magic is None else magic
    raw = struct.pack(">I", code) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    write_cifar100(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def test_cifar100_round_trip(cifar100_dir: Path) -> None:
    train = load_cifar(cifar100_dir, "cifar100", "train")
    test = load_cifar(cifar100_dir, "cifar100", "test")
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == [(i * 37) % 100 for i in range(20)]
    assert test.labels.tolist() == [(i * 37) % 100 for i in range(1000, 1010)]
    assert train.num_classes == 100
    assert train.class_names[0] == "fine_00" and train.class_names[99] == "fine_99"
    for i, c, y, x in [(0, 0, 0, 0), (3, 1, 5, 7), (19, 2, 31, 31), (7, 2, 0, 31), (11, 0, 31, 0)]:
        assert int(train.images[i, c, y, x]) == expected_pixel(i, c, y, x)
    assert int(test.images[4, 1, 10, 20]) == expected_pixel(1004, 1, 10, 20)


def test_cifar10_round_trip_python2_pickles(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    train = load_dataset("cifar10", tmp_path, "train")
    test = load_dataset("cifar10", tmp_path, "test")
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    # The five batches are concatenated in order.
    assert train.labels.tolist() == [(3 * i + 1) % 10 for i in range(20)]
    assert train.class_names == [n.decode() for n in CIFAR10_NAMES]
    for i, c, y, x in [(0, 0, 0, 0), (5, 2, 17, 3), (19, 1, 31, 30)]:
        assert int(train.images[i, c, y, x]) == expected_pixel(i, c, y, x)
    assert int(test.images[9, 0, 1, 2]) == expected_pixel(1009, 0, 1, 2)


def test_cifar_extracts_archive_without_checksum(tmp_path: Path) -> None:
    source = tmp_path / "src"
    folder = write_cifar100(source)
    target = tmp_path / "data"
    target.mkdir()
    with tarfile.open(target / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    arrays = load_cifar(target, "cifar100", "test")  # checksum differs from the official one
    assert arrays.images.shape == (10, 3, 32, 32)
    assert (target / "cifar-100-python" / "meta").is_file()
    assert [p.name for p in target.iterdir() if p.name.startswith(".extract")] == []


def test_cifar_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*cifar-10-python.tar.gz"):
        load_cifar(tmp_path, "cifar10", "train")


def test_cifar_missing_file(cifar100_dir: Path) -> None:
    (cifar100_dir / "cifar-100-python" / "test").unlink()
    with pytest.raises(FileNotFoundError, match="test is missing"):
        load_cifar(cifar100_dir, "cifar100", "test")


def test_cifar_truncated_and_garbled_files(cifar100_dir: Path) -> None:
    path = cifar100_dir / "cifar-100-python" / "train"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cifar-100-python/train.*truncated"):
        load_cifar(cifar100_dir, "cifar100", "train")
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"cifar-100-python/train"):
        load_cifar(cifar100_dir, "cifar100", "train")


def test_cifar_bad_contents(cifar100_dir: Path) -> None:
    path = cifar100_dir / "cifar-100-python" / "test"
    entry = pickle.loads(path.read_bytes(), encoding="bytes")
    entry[b"fine_labels"][3] = 100
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(ValueError, match=r"labels span \[.*100\]"):
        load_cifar(cifar100_dir, "cifar100", "test")
    entry[b"fine_labels"][3] = 0
    entry[b"data"] = entry[b"data"][:, :3000]
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(ValueError, match="3072"):
        load_cifar(cifar100_dir, "cifar100", "test")
    entry[b"data"] = pixel_rows(0, 9)
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(ValueError, match="9 images"):
        load_cifar(cifar100_dir, "cifar100", "test")
    meta = cifar100_dir / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps({b"fine_label_names": CIFAR100_FINE[:99]}))
    with pytest.raises(ValueError, match="99 classes, expected 100"):
        load_cifar(cifar100_dir, "cifar100", "train")


# --------------------------------------------------------------------------------------------
# Fashion-MNIST / idx
# --------------------------------------------------------------------------------------------


def test_idx_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train_images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    train_labels = np.arange(12) % 10
    test_images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test_labels = np.array([9, 0, 3, 3, 1])
    folder = tmp_path / "fashion-mnist"  # found as data_dir/fashion-mnist
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", train_images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", train_labels)
    write_idx(folder / "t10k-images-idx3-ubyte", test_images, compress=False)
    write_idx(folder / "t10k-labels-idx1-ubyte", test_labels, compress=False)
    train = load_fashion_mnist(tmp_path, "train")
    test = load_dataset("fashion-mnist", str(folder), "test")
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(train_images))
    assert train.labels.tolist() == train_labels.tolist()
    assert torch.equal(test.images[:, 0], torch.from_numpy(test_images))
    assert test.labels.tolist() == [9, 0, 3, 3, 1]
    assert test.class_names[0] == "T-shirt/top" and test.class_names[9] == "Ankle boot"


def test_idx_bad_magic_truncated_and_missing(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28)), magic=0x0801)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz has magic number 0x00000801"):
        load_fashion_mnist(tmp_path, "test")
    raw = struct.pack(">IIII", 0x0803, 2, 28, 28) + bytes(28 * 28)  # one image short
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist(tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:30])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_fashion_mnist(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, "train")


def test_real_fashion_mnist_test_split() -> None:
    require(have_fashion_mnist(), "Debian's dataset-fashion-mnist")
    test = load_fashion_mnist(D.DEFAULT_FASHION_MNIST_DIR, "test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.num_classes == 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert 0 < test.images.float().mean() < 255


def test_load_dataset_unknown_name() -> None:
    with pytest.raises(ValueError, match="cifar10, cifar100, fashion-mnist"):
        load_dataset("mnist", "data", "train")


def test_image_arrays_validation_and_subset() -> None:
    images = torch.arange(6 * 3 * 2 * 2, dtype=torch.uint8).view(6, 3, 2, 2)
    arrays = ImageArrays(images, torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"])
    sub = arrays.subset(torch.tensor([4, 1]))
    assert sub.labels.tolist() == [1, 1] and torch.equal(sub.images[0], images[4])
    assert sub.num_classes == 3 and len(sub) == 2
    with pytest.raises(ValueError, match="labels span"):
        ImageArrays(images, torch.tensor([0, 1, 2, 0, 1, 3]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="uint8"):
        ImageArrays(images.float(), torch.zeros(6, dtype=torch.long), ["a"])


# --------------------------------------------------------------------------------------------
# Splits and statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("heldout", [0.1, 0.25, 7, 33.0])
def test_stratified_split_properties(heldout: float) -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10 + [3] * 3).roll(17)
    n = len(labels)
    train, held = stratified_split(labels, heldout, seed=3)
    k = round(heldout * n) if heldout < 1 else int(heldout)
    assert len(held) == k and len(train) == n - k
    assert torch.equal(torch.cat([train, held]).sort().values, torch.arange(n))
    assert torch.equal(train, train.sort().values) and torch.equal(held, held.sort().values)
    assert train.dtype == held.dtype == torch.int64
    counts = torch.bincount(labels)
    got = torch.bincount(labels[held], minlength=4)
    assert (got >= 1).all()  # every class contributes
    share = counts.double() * k / n
    # Proportional within one sample; giving every class one can cost another sample.
    tolerance = 1.0 if (share >= 1).all() else 2.0
    assert ((got.double() - share).abs() <= tolerance).all()
    again = stratified_split(labels, heldout, seed=3)
    assert torch.equal(again[1], held)
    assert not torch.equal(stratified_split(labels, heldout, seed=4)[1], held)


def test_stratified_split_edge_cases() -> None:
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 2 + [3])
    train, held = stratified_split(labels, 0, seed=0)
    assert len(held) == 0 and torch.equal(train, torch.arange(len(labels)))
    _, held = stratified_split(labels, 0.1, seed=0)  # 6 held out: small classes still get one
    assert torch.bincount(labels[held], minlength=4).tolist() == [4, 1, 1, 0]
    _, held = stratified_split(labels, 2, seed=0)  # too few to go round: largest shares first
    assert torch.bincount(labels[held], minlength=4).tolist() == [2, 0, 0, 0]
    _, held = stratified_split(labels, 50, seed=0)  # every class keeps a training sample
    assert torch.bincount(labels[held], minlength=4).tolist() == [47, 2, 1, 0]
    for bad in (-0.1, 2.5, len(labels), float("nan"), True):
        with pytest.raises(ValueError, match="heldout"):
            stratified_split(labels, bad, seed=0)
    with pytest.raises(ValueError, match="integer"):
        stratified_split(labels.float(), 0.1, seed=0)


def test_channel_stats_matches_numpy() -> None:
    images = torch.randint(0, 256, (11, 3, 5, 7), dtype=torch.uint8)
    images[:, 2] //= 4
    mean, std = channel_stats(images, chunk_size=3)
    x = images.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-10)
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(images.float())


# --------------------------------------------------------------------------------------------
# Augmentation and normalisation
# --------------------------------------------------------------------------------------------


def test_shift_flip_identity() -> None:
    images = torch.rand(8, 3, 10, 10)
    out = shift_flip(images, max_shift=0, flip=False)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


def test_shift_flip_is_reflect_pad_then_crop() -> None:
    s, n = 3, 256
    images = torch.rand(n, 2, 9, 12, dtype=torch.float64)  # all pixel values distinct
    out = shift_flip(images, max_shift=s, flip=True, generator=torch.Generator().manual_seed(0))
    padded = F.pad(images, (s, s, s, s), mode="reflect")
    found = torch.zeros(n, dtype=torch.long)
    offsets: set[tuple[int, int]] = set()
    flips = 0
    for top in range(2 * s + 1):
        for left in range(2 * s + 1):
            crop = padded[:, :, top : top + 9, left : left + 12]
            for flipped, candidate in ((False, crop), (True, crop.flip(-1))):
                match = (candidate == out).flatten(1).all(1)
                found += match.long()
                if match.any():
                    offsets.add((top, left))
                    flips += int(match.sum()) if flipped else 0
    assert (found == 1).all()  # every output is exactly one padded crop (possibly flipped)
    tops, lefts = {t for t, _ in offsets}, {u for _, u in offsets}
    assert tops == lefts == set(range(2 * s + 1))  # the whole shift range is used
    assert 90 < flips < 166
    again = shift_flip(images, max_shift=s, flip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, out)


def test_shift_flip_flips_about_half() -> None:
    base = torch.arange(16.0).view(1, 1, 4, 4)
    images = base.expand(2000, 3, 4, 4)
    out = shift_flip(images, max_shift=0, flip=True)
    same = (out == base).flatten(1).all(1)
    flipped = (out == base.flip(-1)).flatten(1).all(1)
    assert (same ^ flipped).all()
    assert 880 < int(flipped.sum()) < 1120


def test_shift_flip_uint8_matches_float_and_validates() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = shift_flip(images, 2, generator=torch.Generator().manual_seed(5))
    b = shift_flip(images.float(), 2, generator=torch.Generator().manual_seed(5))
    assert a.dtype == torch.uint8 and torch.equal(a.float(), b)
    with pytest.raises(ValueError, match="smaller than the image size"):
        shift_flip(images, max_shift=8)


def test_shift_flip_fast_on_batch() -> None:
    images = torch.rand(256, 3, 32, 32)
    shift_flip(images)
    start = time.perf_counter()
    for _ in range(5):
        out = shift_flip(images)
    elapsed = (time.perf_counter() - start) / 5
    assert out.shape == (256, 3, 32, 32)
    assert elapsed < 0.15, f"shift_flip took {elapsed * 1000:.1f} ms per batch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shift_flip_and_normalize_on_cuda() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    cpu = shift_flip(images, 4, generator=torch.Generator().manual_seed(2))
    gpu = shift_flip(images.cuda(), 4, generator=torch.Generator().manual_seed(2))
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
    assert shift_flip(images.cuda(), 4).is_cuda  # default CUDA generator
    out = normalize(gpu, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    assert out.is_cuda and torch.allclose(out.cpu(), normalize(cpu, [0.5, 0.4, 0.3], [0.2] * 3))


def test_normalize() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    out = normalize(images, mean, std)
    ref = (images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1).double()) / torch.tensor(
        std
    ).view(1, 3, 1, 1).double()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normalize(images.float(), mean, std), out)
    with pytest.raises(ValueError, match="3 values"):
        normalize(images, [0.5], [0.5])


# --------------------------------------------------------------------------------------------
# Batched loading
# --------------------------------------------------------------------------------------------


def small_arrays(n: int = 23) -> ImageArrays:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    return ImageArrays(images, torch.arange(n) % 5, [str(i) for i in range(5)])


def loader_indices(loader) -> list[list[int]]:
    batches = []
    for images, labels in loader:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        ids = images[:, 0, 0, 0].long()
        assert torch.equal(labels, ids % 5)  # images and labels stay aligned
        batches.append(ids.tolist())
    return batches


def test_batch_index_dataset() -> None:
    ds = BatchIndexDataset(small_arrays())
    images, labels = ds[[3, 0, 7]]
    assert images.shape == (3, 3, 4, 4) and labels.tolist() == [3, 0, 2]
    assert len(ds) == 23


def test_batch_loader_covers_and_reshuffles_by_epoch() -> None:
    arrays = small_arrays()
    loader = batch_loader(arrays, batch_size=5, shuffle=True, drop_last=False, seed=1)
    assert len(loader) == 5
    epochs = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        batches = loader_indices(loader)
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        assert sorted(sum(batches, [])) == list(range(23))
        epochs.append(sum(batches, []))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    fresh = batch_loader(arrays, batch_size=5, shuffle=True, drop_last=False, seed=1)
    fresh.sampler.set_epoch(1)
    assert sum(loader_indices(fresh), []) == epochs[1]
    dropped = batch_loader(arrays, batch_size=5, shuffle=True, drop_last=True, seed=1)
    assert [len(b) for b in loader_indices(dropped)] == [5] * 4 and len(dropped) == 4
    ordered = batch_loader(arrays, batch_size=10, shuffle=False, drop_last=False)
    assert sum(loader_indices(ordered), []) == list(range(23))


def test_batch_loader_replicas() -> None:
    arrays = small_arrays()
    shares = [
        sum(loader_indices(batch_loader(arrays, 4, False, False, num_replicas=2, rank=r)), [])
        for r in range(2)
    ]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(23))  # no padding duplicates
    train = []
    for r in range(2):
        loader = batch_loader(arrays, 4, True, True, seed=0, num_replicas=2, rank=r)
        loader.sampler.set_epoch(3)
        train.append(loader_indices(loader))
    assert len(train[0]) == len(train[1]) == 2  # same number of batches on every rank
    assert not set(sum(train[0], [])) & set(sum(train[1], []))
    with pytest.raises(ValueError, match="rank"):
        EpochBatchSampler(10, 2, False, False, num_replicas=2, rank=2)


# --------------------------------------------------------------------------------------------
# Data modules
# --------------------------------------------------------------------------------------------


def test_in_memory_data_module(cifar100_dir: Path) -> None:
    dm = InMemoryDataModule(
        dataset="cifar100", data_dir=str(cifar100_dir), batch_size=4, eval_batch_size=8, heldout=4
    )
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (100, 3, 32)  # before setup
    dm.setup("fit")
    train = dm.train_arrays
    dm.setup("fit")
    assert dm.train_arrays is train  # idempotent
    assert len(dm.train_arrays) == 16 and len(dm.heldout_arrays) == 4
    assert dm.class_names[:2] == ["fine_00", "fine_01"]
    assert len(dm.mean) == len(dm.std) == 3

    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    out = dm.prepare_batch(images, train=True)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 32, 32)
    # Normalised with the training part's statistics: the whole part has mean 0, std 1.
    whole = dm.prepare_batch(dm.train_arrays.images, train=False)
    torch.testing.assert_close(whole.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        whole.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0
    )
    # Without a training trainer attached the hook only normalises.
    hooked, hooked_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(hooked, dm.prepare_batch(images, train=False))
    assert torch.equal(hooked_labels, labels)

    assert sum(len(b[1]) for b in dm.val_dataloader()) == 10
    assert sum(len(b[1]) for b in dm.heldout_dataloader()) == 4


def test_in_memory_unit_normalization_and_train_size(cifar100_dir: Path) -> None:
    dm = InMemoryDataModule(
        dataset="cifar100",
        data_dir=str(cifar100_dir),
        batch_size=2,
        heldout=0.0,
        normalization="unit",
        train_size=12,
    )
    assert dm.train_arrays is None
    assert dm.mean == [0.0] * 3 and dm.std == [1.0] * 3  # triggers setup
    assert len(dm.train_arrays) == 12
    images = dm.train_arrays.images[:2]
    torch.testing.assert_close(dm.prepare_batch(images, train=False), images.float() / 255)
    with pytest.raises(ValueError, match="no held-out data"):
        dm.heldout_dataloader()
    with pytest.raises(ValueError, match="Unknown dataset"):
        InMemoryDataModule(dataset="svhn")


def test_in_memory_data_module_in_trainer(cifar100_dir: Path) -> None:
    import lightning

    seen: list[tuple[str, torch.dtype, bool, list[int]]] = []

    class Probe(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3 * 32 * 32, 100)

        def training_step(self, batch, batch_idx):
            x, y = batch
            seen.append(("train", x.dtype, self.trainer.training, y.tolist()))
            return F.cross_entropy(self.layer(x.flatten(1)), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            seen.append(("val", x.dtype, self.trainer.training, y.tolist()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = InMemoryDataModule(
        dataset="cifar100", data_dir=str(cifar100_dir), batch_size=8, eval_batch_size=10
    )
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Probe(), datamodule=dm)
    train_batches = [s for s in seen if s[0] == "train"]
    val_batches = [s for s in seen if s[0] == "val"]
    assert len(train_batches) == 4 and len(val_batches) == 2  # 18 train images -> 2 per epoch
    assert all(s[1] == torch.float32 for s in seen)
    assert all(s[2] for s in train_batches) and not any(s[2] for s in val_batches)
    # The sampler was re-seeded per epoch by Lightning: epochs see different orders.
    assert train_batches[0][3] + train_batches[1][3] != train_batches[2][3] + train_batches[3][3]


def write_image_folder(root: Path, jpeg: bool = False) -> None:
    """train/ and val/ with two classes; PNGs of noise, or (``jpeg``) smooth images saved as a
    grayscale JPEG, a PNG and RGB JPEGs per class, and in train/ a BMP and a 16-bit PNG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                if not jpeg:
                    pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")
                    continue
                smooth = np.kron(rng.integers(0, 256, (8, 10, 3)), np.ones((5, 5, 1)))
                img = Image.fromarray(smooth.astype(np.uint8))
                if i == 0:
                    img.convert("L").save(folder / f"{i}.jpg", quality=95)
                elif i == 1:
                    img.save(folder / f"{i}.png")
                elif i == 3 and cls == "cat":  # a format torchvision cannot decode
                    img.save(folder / f"{i}.bmp")
                elif i == 3:  # 16 bits per pixel
                    wide = (smooth[..., 0] * 257).astype(np.uint16)
                    Image.fromarray(wide).save(folder / f"{i}.png")
                else:
                    img.save(folder / f"{i}.jpg", quality=95)


def test_image_folder_data_module(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    dm = ImageFolderDataModule(
        str(tmp_path), image_size=16, batch_size=3, eval_batch_size=4, num_workers=0, heldout=0.25
    )
    dm.setup("fit")
    assert dm.num_classes == 2 and dm.class_names == ["cat", "dog"]
    assert dm.in_channels == 3 and dm.image_size == 16
    assert dm.mean == D.IMAGENET_MEAN and dm.std == D.IMAGENET_STD
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 16, 16)
    assert type(images) is torch.Tensor and labels.dtype == torch.int64
    assert len(dm.train_dataloader()) == 2  # 6 training images after holding out 2
    val_images, val_labels = next(iter(dm.val_dataloader()))
    assert val_images.shape == (4, 3, 16, 16) and val_labels.tolist() == [0, 0, 1, 1]
    held_images, held_labels = next(iter(dm.heldout_dataloader()))
    assert held_images.shape == (2, 3, 16, 16) and sorted(held_labels.tolist()) == [0, 1]
    out, _ = dm.on_after_batch_transfer((val_images, val_labels), 0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, normalize(val_images, D.IMAGENET_MEAN, D.IMAGENET_STD))


def test_image_folder_missing(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    dm = ImageFolderDataModule(str(tmp_path), num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"val not found; expected .*/train/<class>"):
        dm.setup()


def test_image_folder_decoding_on_the_device(tmp_path: Path) -> None:
    """decode_on_device: workers read bytes; decoding and cropping happen after transfer, with
    the same result as the CPU path where no randomness is involved."""
    import lightning as L
    from PIL import Image

    from ssal.data import decode_images
    from ssal.train import SSALModule
    from tests.conftest import quick_trainer

    write_image_folder(tmp_path, jpeg=True)
    kwargs = dict(image_size=16, batch_size=4, eval_batch_size=4, num_workers=0, heldout=0)
    # worker processes send the bytes back (a memory-mapped tensor would hang the loader)
    dm = ImageFolderDataModule(str(tmp_path), decode_on_device=True, **{**kwargs, "num_workers": 2})
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    for encoded, labels, paths in batches:  # JPEG (RGB, gray), PNG (8, 16 bit), BMP
        assert isinstance(encoded, list) and all(e.dtype == torch.uint8 for e in encoded)
        assert all(Path(p).parent.parent == tmp_path / "train" for p in paths)
        batch = (encoded, labels, paths)
        images, moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16)
        assert torch.equal(moved, labels)
    dm = ImageFolderDataModule(str(tmp_path), decode_on_device=True, **kwargs)
    # Decoding and evaluation crops equal the CPU path's (PIL) up to resampling differences.
    cpu = ImageFolderDataModule(str(tmp_path), **kwargs)
    cpu.setup()
    files = [path for path, _ in cpu.val_set.samples]
    from torchvision.io import read_file

    decoded = decode_images([read_file(f) for f in files], torch.device("cpu"))
    for f, img in zip(files, decoded, strict=True):
        pil = np.asarray(Image.open(f).convert("RGB"))
        assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - pil).max() <= 1
    ours = dm.crop_batch(decoded, train=False).float()
    reference = torch.stack([cpu.val_set[i][0] for i in range(len(files))]).float()
    assert (ours - reference).abs().mean() < 2.0  # of 255 levels
    # the validation loader is untouched: already decoded uint8 batches
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.shape == (4, 3, 16, 16)
    # Lightning trains on it end to end
    L.seed_everything(0)
    trainer = quick_trainer(2, enable_progress_bar=False, limit_val_batches=1)
    module = SSALModule({"name": "tiny-wrn"}, 2, 3, optim={"warmup_epochs": 1})
    trainer.fit(module, dm)
    assert trainer.global_step == 2


def test_random_resized_crop_box_rule_and_seeding() -> None:
    from types import SimpleNamespace

    from ssal.data import random_resized_crop_box

    g = torch.Generator().manual_seed(0)
    boxes = [random_resized_crop_box(60, 80, g) for _ in range(2000)]
    for top, left, h, w in boxes:
        assert top >= 0 and left >= 0 and top + h <= 60 and left + w <= 80
    share = np.array([h * w / (60 * 80) for _, _, h, w in boxes])
    aspect = np.array([w / h for _, _, h, w in boxes])
    assert share.min() >= 0.07 and share.max() <= 1.0
    assert aspect.min() >= 0.7 and aspect.max() <= 1.4
    # torchvision's rule gives the same distribution of areas
    torch.manual_seed(0)
    from torchvision.transforms import v2

    params = v2.RandomResizedCrop.get_params
    ref = [params(torch.zeros(1, 60, 80), (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(2000)]
    ref_share = np.array([h * w / (60 * 80) for _, _, h, w in ref])
    assert abs(share.mean() - ref_share.mean()) < 0.03
    # a thin image falls back to a centre crop of the allowed aspect
    assert random_resized_crop_box(10, 200, g, scale=(0.99, 1.0)) == (0, 93, 10, 13)
    # each process crops with its own stream, reproducibly
    dm = ImageFolderDataModule("unused", seed=3)
    draws = {}
    for rank in (0, 1, 0):
        dm._generator, dm.trainer = None, SimpleNamespace(global_rank=rank)
        draws.setdefault(rank, []).append(random_resized_crop_box(60, 80, dm._crop_generator()))
    assert draws[0][0] == draws[0][1] and draws[0][0] != draws[1][0]
    # a checkpoint carries the stream: a restored module draws what the first would draw next
    state = dm.state_dict()
    assert list(state) == ["crop_generator"] and state["crop_generator"].dtype == torch.uint8
    restored = ImageFolderDataModule("unused", seed=3)
    restored.load_state_dict(state)
    for _ in range(3):
        assert random_resized_crop_box(60, 80, restored._crop_generator()) == (
            random_resized_crop_box(60, 80, dm._crop_generator())
        )
    assert ImageFolderDataModule("unused").state_dict() == {}


def test_image_folder_workers_default_to_the_cores_available(monkeypatch):
    from ssal.data import ImageFolderDataModule
    from ssal.data.image_folder import default_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    assert default_workers() == 2
    dm = ImageFolderDataModule("unused")
    assert dm.num_workers == 2 and dm.hparams["num_workers"] is None  # the machine decides
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(64)))
    assert default_workers() == 8
