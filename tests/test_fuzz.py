"""Every reader of user files, fuzzed: truncated, random, bit-flipped, huge declared sizes,
structure-aware changes and crafted payloads end in a correct result or one clear line.

The table ``READERS`` holds one entry per reader (``tests/fuzzing.py`` runs them). An ordinary
run takes ``fuzzing.CI_CASES`` seeded cases per reader and mutation kind; a deeper run is
``pytest -m fuzz --fuzz-cases 2000`` (or ``SSAL_FUZZ_CASES=2000``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zlib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import write_tiny_config
from tests.fuzzing import KINDS, Reader, case_count, mutate, mutate_tree, random_value, run_case
from tests.test_data import (
    pixel_rows,
    write_cifar10,
    write_cifar100,
    write_idx,
    write_image_folder,
)

pytestmark = pytest.mark.fuzz


class Run:
    """Unpickles as a call of ``func(*args)``: what a tampered pickle does to run code."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def touch(marker: str) -> Run:
    return Run(os.system, f"touch {marker}")


def exec_touch(marker: str) -> Run:
    return Run(exec, f"open({marker!r}, 'w').close()")


@contextlib.contextmanager
def chdir(folder: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


# --------------------------------------------------------------------------------------------
# CIFAR (python-format pickles)
# --------------------------------------------------------------------------------------------


def read_cifar(name: str) -> Any:
    from ssal.data import load_cifar

    return lambda folder: [load_cifar(folder, name, split) for split in ("train", "test")]


def check_cifar(classes: int) -> Any:
    def check(result: Any) -> None:
        for arrays in result:
            assert arrays.images.dtype == torch.uint8 and arrays.images.shape[1:] == (3, 32, 32)
            assert arrays.labels.dtype == torch.int64 and len(arrays.labels) == len(arrays.images)
            assert len(arrays.class_names) == classes
            assert all(0 <= int(v) < classes for v in arrays.labels)

    return check


def cifar_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    """Unpickle the file (ours, so safe), change one value, pickle it again."""
    doc = pickle.loads(data, encoding="bytes")
    if rng.random() < 0.3 and isinstance(doc, dict):
        shapes = [(2, 3072), (0, 3072), (3, 3, 32, 32), (4,), (2, 3071)]
        shape = shapes[int(rng.integers(0, len(shapes)))]
        dtype = [np.uint8, np.float32, np.int64, np.bool_][int(rng.integers(0, 4))]
        doc[b"data"] = np.zeros(shape, dtype)
    else:
        doc = mutate_tree(doc, rng, marker)
    return pickle.dumps(doc, protocol=int(rng.integers(2, 6)))


def pickle_ops(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


def cifar_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    """Code-running globals (alone and among valid arrays) and allocations the file cannot
    back: huge arrays, memo indices, strings, ``bytes(n)``, opcode floods."""
    base = "cifar-100-python"
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
    valid = {b"fine_labels": [1, 2], b"coarse_labels": [0, 0], b"data": pixel_rows(0, 2)}
    huge = b"\x8a\x06\x00\x00\x00\x00\x00\x01"  # LONG1: 2**40
    reconstruct = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    dtype = b"cnumpy\ndtype\nU\x02u1\x89\x88\x87R"
    cases = [
        ("meta: os.system", f"{base}/meta", pickle.dumps(touch(marker), protocol=2)),
        ("meta: exec", f"{base}/meta", pickle.dumps(exec_touch(marker))),
        ("meta with one payload", f"{base}/meta", pickle.dumps({**meta, b"x": touch(marker)})),
        ("arrays and a payload", f"{base}/train", pickle.dumps({**valid, b"e": touch(marker)})),
        (
            "arrays and a payload, protocol 2",
            f"{base}/test",
            pickle.dumps({**valid, b"e": [exec_touch(marker)]}, protocol=2),
        ),
        (
            "python 2 GLOBAL os.system",
            f"{base}/meta",
            f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        ),
        ("_reconstruct of 2**40 bytes", f"{base}/train", pickle_ops(reconstruct, huge, b"\x85U\x01b\x87R")),
        (
            "array state of 2**40 elements, 4 bytes of data",
            f"{base}/train",
            pickle_ops(
                b"}(U\x04data", reconstruct, b"K\x00\x85U\x01b\x87R(K\x01", huge, b"\x85",
                dtype, b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x04abcdtbu",
            ),
        ),
        ("memo index 2**31", f"{base}/meta", pickle_ops(b"]r\xff\xff\xff\x7f")),
        ("string of 2 GB declared", f"{base}/meta", pickle_ops(b"T\xff\xff\xff\x7fabc")),
        ("bytes(2**40)", f"{base}/meta", pickle_ops(b"c__builtin__\nbytes\n", huge, b"\x85R")),
        ("_codecs.encode with zlib", f"{base}/meta", pickle_ops(b"c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R")),
        ("object array", f"{base}/train", pickle.dumps({**valid, b"data": np.array([1, 2], dtype=object)})),
        ("3 million empty lists", f"{base}/meta", pickle_ops(b"(", b"]" * 3_000_000, b"l")),
        ("nested 100000 deep", f"{base}/meta", pickle_ops(b"]" * 100_000, b"a" * 99_999)),
    ]  # fmt: skip
    return cases


def write_cifar100_small(folder: Path) -> list[Path]:
    base = write_cifar100(folder, n_train=20, n_test=10)
    return [base / n for n in ("train", "test", "meta")]


def write_cifar10_small(folder: Path) -> list[Path]:
    base = write_cifar10(folder, per_batch=4, n_test=6)
    return sorted(base.iterdir())


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)
# --------------------------------------------------------------------------------------------


def write_fashion(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)), False)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(5) % 10, False)
    return sorted(folder.iterdir())


def read_fashion(folder: Path) -> Any:
    from ssal.data import load_fashion_mnist

    return [load_fashion_mnist(folder, split) for split in ("train", "test")]


def check_fashion(result: Any) -> None:
    for arrays in result:
        assert arrays.images.dtype == torch.uint8 and arrays.images.shape[1:] == (1, 28, 28)
        assert len(arrays.labels) == len(arrays.images) and int(arrays.labels.max()) < 10


def idx_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    """Change the header's sizes (and the compression) but keep a well-formed file."""
    packed = data[:2] == b"\x1f\x8b"
    raw = bytearray(gzip.decompress(data) if packed else data)
    header = 4 + 4 * (raw[3] if len(raw) > 3 else 0)
    i = int(rng.integers(0, max(header - 3, 1)))
    value = [0, 1, 28, 2**16, 2**31, 2**32 - 1][int(rng.integers(0, 6))]
    raw[i : i + 4] = value.to_bytes(4, "big")
    if rng.random() < 0.3:
        raw = raw[: int(rng.integers(header, len(raw) + 1))]
    return gzip.compress(bytes(raw)) if packed else bytes(raw)


def idx_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    images, labels = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
    member = gzip.compress(bytes(16 << 20), 9)  # 16 MiB of zeros
    bomb = gzip.compress(struct.pack(">IIII", 0x0803, 12, 28, 28) + bytes(12 * 784)) + member * 256
    return [
        ("dims 2**32-1 uncompressed", "t10k-images-idx3-ubyte", struct.pack(">IIII", 0x0803, 2**32 - 1, 2**32 - 1, 28)),
        ("dims 2**31 gzipped", images, gzip.compress(struct.pack(">IIII", 0x0803, 2**31, 28, 28))),
        ("labels 2**32-1 gzipped", labels, gzip.compress(struct.pack(">II", 0x0801, 2**32 - 1) + bytes(64))),
        ("4 GiB of zeros after the data (gzip bomb)", images, bomb),
        ("a pickle instead", images, pickle.dumps(touch(marker))),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Image files (ssal predict) and image folders (ImageFolderDataModule)
# --------------------------------------------------------------------------------------------


def write_images(folder: Path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    rgb.save(folder / "a.png")
    rgb.save(folder / "b.jpg", quality=90)
    rgb.convert("P").save(folder / "c.gif")
    rgb.save(folder / "d.bmp")
    rgb.save(folder / "e.tiff")
    rgb.save(folder / "f.webp")
    Image.fromarray((rng.integers(0, 65535, (20, 30))).astype(np.uint16)).save(folder / "g.png")
    return sorted(folder.iterdir())


def read_images(folder: Path) -> Any:
    from ssal.inference import load_image

    prep = {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 36, "crop": [32, 32]}
    out = []
    for path in sorted(folder.iterdir()):
        out += [load_image(path, 3, (32, 32), prep), load_image(path, 1, (28, 28))]
    return out


def check_images(result: Any) -> None:
    for i, image in enumerate(result):
        assert image.dtype == torch.uint8
        assert image.shape == ((3, 32, 32) if i % 2 == 0 else (1, 28, 28))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_of(width: int, height: int, rows: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


def jpeg_of(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def gif_of(width: int, height: int) -> bytes:
    """A 1 x 1 GIF whose screen and frame claim ``width`` x ``height``."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("P", (1, 1)).save(out, format="GIF")
    data = bytearray(out.getvalue())
    size = struct.pack("<HH", width, height)
    data[6:10] = size
    frame = data.index(b",")  # the image descriptor: left, top, width, height
    data[frame + 5 : frame + 9] = size
    return bytes(data)


def image_crafted(name: str) -> Any:
    def crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
        return [
            ("PNG of 100000 x 100000 (decompression bomb)", name, png_of(100_000, 100_000)),
            ("PNG of 10000 x 10000, past PIL's limit", name, png_of(10_000, 10_000, bytes(10))),
            ("PNG of 9000 x 9000 without data", name, png_of(9_000, 9_000, bytes(5))),
            ("JPEG of 65500 x 65500", name, jpeg_of(65_500, 65_500)),
            ("GIF of 65535 x 65535", name, gif_of(65_535, 65_535)),
            ("a pickle", name, pickle.dumps(touch(marker))),
            ("empty", name, b""),
        ]

    return crafted


def write_folder(folder: Path) -> list[Path]:
    write_image_folder(folder, jpeg=True)
    return sorted(p for p in folder.rglob("*") if p.is_file())


def read_folder(decode_on_device: bool) -> Any:
    def read(folder: Path) -> Any:
        from ssal.data import ImageFolderDataModule

        dm = ImageFolderDataModule(
            str(folder),
            image_size=16,
            batch_size=2,
            eval_batch_size=4,
            num_workers=0,
            heldout=0.25,
            decode_on_device=decode_on_device,
        )
        dm.setup("fit")
        cpu = torch.device("cpu")
        batches = []
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.heldout_dataloader()):
            batches += [dm.transfer_batch_to_device(b, cpu, 0) for b in loader]
        return batches

    return read


def check_folder(batches: Any) -> None:
    for images, labels in batches:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
        assert len(labels) == len(images) and set(labels.tolist()) <= {0, 1}


# --------------------------------------------------------------------------------------------
# Groupings files (JSON)
# --------------------------------------------------------------------------------------------


def write_groupings(folder: Path) -> list[Path]:
    from ssal.grouping import Grouping, save_groupings

    gs = [Grouping(np.arange(10) % 2, name="a"), Grouping(np.arange(10) % 5, name="b")]
    return [save_groupings(folder / "g.json", gs, [f"c{i}" for i in range(10)])]


def read_groupings(folder: Path) -> Any:
    from ssal.grouping import load_groupings

    path = folder / "g.json"
    return load_groupings(path), load_groupings(path, num_classes=10)


def check_groupings(result: Any) -> None:
    for groupings, names in result:
        assert groupings and names is None or all(isinstance(n, str) for n in names)
        for g in groupings:
            assert g.assignment.dtype == np.int64 and g.assignment.ndim == 1
            assert g.num_groups == int(g.assignment.max()) + 1
            assert isinstance(g.name, str) and isinstance(g.mode, str)
            if names is not None:
                assert len(names) == g.num_classes


def json_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    if path.suffix == ".safetensors":
        return safetensors_structure(data, rng, marker)
    doc = mutate_tree(json.loads(data), rng, marker)
    return json.dumps(doc).encode()


def groupings_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    def doc(assignment: Any, **extra: Any) -> bytes:
        return json.dumps({"groupings": [{"assignment": assignment, **extra}]}).encode()

    return [
        ("group index 2**31", "g.json", doc([0, 2**31])),
        ("group index 2**70", "g.json", doc([0, 2**70])),
        ("num_groups 2**40", "g.json", doc([0, 1], num_groups=2**40)),
        ("num_groups as text", "g.json", doc([0, 1], num_groups="2")),
        ("nested 100000 deep", "g.json", b"[" * 100_000 + b"]" * 100_000),
        ("a number of 100000 digits", "g.json", doc([0, int("1" * 4000)])),
        ("not UTF-8", "g.json", b"\xff\xfe{}"),
    ]


# --------------------------------------------------------------------------------------------
# Checkpoints and export folders
# --------------------------------------------------------------------------------------------


def write_ckpt(folder: Path) -> list[Path]:
    """An untrained small-cnn checkpoint (1 channel, 28 x 28, two branches) as ssal writes it."""
    from ssal import create_model
    from ssal.checkpoint import describe_model
    from ssal.data.transforms import eval_preprocessing
    from ssal.grouping import Grouping

    groupings = [Grouping(np.arange(10) % 2, name="a"), Grouping(np.arange(10) % 5, name="b")]
    net = create_model("small-cnn", 10, groupings, in_channels=1)
    names = [f"c{i}" for i in range(10)]
    data = {"class_path": "ssal.data.InMemoryDataModule", "init_args": {"dataset": "fashion-mnist"}}
    prep = eval_preprocessing([0.3], [0.4])
    info = describe_model(net, "small-cnn", 10, [1.0, 1.0], 0.3, names, prep, data)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    path = folder / "model.ckpt"
    torch.save({"state_dict": state, "ssal": info, "epoch": 3, "global_step": 30}, path)
    return [path]


def read_ckpt(folder: Path) -> Any:
    from ssal.checkpoint import load_checkpoint
    from ssal.inference import predict_tensors

    target = folder / "model.ckpt" if (folder / "model.ckpt").exists() else folder
    model, info = load_checkpoint(target)
    c, h, w = info["input_size"]
    images = torch.randint(0, 256, (2, c, h, w), dtype=torch.uint8)
    return predict_tensors(model, info, images, top_k=2)


def check_predictions(records: Any) -> None:
    assert len(records) == 2
    json.dumps(records)  # plain values
    for r in records:
        assert {"fine", "joint", "branches", "consistent"} <= set(r)


def ckpt_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    """Load the checkpoint (ours), change one value (or tensor), save it again."""
    ckpt = torch.load(io.BytesIO(data), weights_only=True)
    section = ckpt["ssal"] if rng.random() < 0.6 else ckpt
    if rng.random() < 0.3:
        key = list(ckpt["state_dict"])[int(rng.integers(0, len(ckpt["state_dict"])))]
        shapes = [(), (1,), (10**6,), (3, 3), tuple(ckpt["state_dict"][key].shape)]
        dtype = [torch.float32, torch.float64, torch.int64, torch.bool][int(rng.integers(0, 4))]
        ckpt["state_dict"][key] = torch.zeros(shapes[int(rng.integers(0, 5))], dtype=dtype)
    else:
        mutate_tree(section, rng, marker)
    out = io.BytesIO()
    torch.save(ckpt, out)
    return out.getvalue()


def ckpt_with(folder: Path, **changes: Any) -> bytes:
    ckpt = torch.load(folder / "model.ckpt", weights_only=True)
    ckpt["ssal"].update(changes)
    out = io.BytesIO()
    torch.save(ckpt, out)
    return out.getvalue()


def ckpt_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    def saved(obj: Any, **kwargs: Any) -> bytes:
        out = io.BytesIO()
        torch.save(obj, out, **kwargs)
        return out.getvalue()

    zipped = io.BytesIO()
    with zipfile.ZipFile(folder / "model.ckpt") as src, zipfile.ZipFile(zipped, "w") as dst:
        for item in src.infolist():
            body = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                body = pickle.dumps(touch(marker), protocol=2)
            dst.writestr(item, body)
    return [
        ("payload in the ssal section", "model.ckpt", saved({"ssal": touch(marker), "state_dict": {}})),
        ("payload, legacy format", "model.ckpt", saved({"ssal": exec_touch(marker)}, _use_new_zipfile_serialization=False)),
        ("a bare pickle", "model.ckpt", pickle.dumps(touch(marker))),
        ("data.pkl replaced", "model.ckpt", zipped.getvalue()),
        ("num_classes 10**9", "model.ckpt", ckpt_with(folder, num_classes=10**9)),
        ("num_classes 10**9, no names", "model.ckpt", ckpt_with(folder, num_classes=10**9, class_names=None)),
        ("input_size of 10**6 pixels a side", "model.ckpt", ckpt_with(folder, input_size=[1, 10**6, 10**6])),
        ("resize to 10**6", "model.ckpt", ckpt_with(folder, preprocessing={"mean": [0.5], "std": [0.5], "resize": 10**6, "crop": [28, 28]})),
        ("groupings of 10**6 groups", "model.ckpt", ckpt_with(folder, groupings=[{"assignment": list(range(10**5))}])),
        ("alpha as text", "model.ckpt", ckpt_with(folder, alpha="0.3")),
        ("class names as a number", "model.ckpt", ckpt_with(folder, class_names=12)),
    ]  # fmt: skip


def write_export(folder: Path) -> list[Path]:
    from ssal.checkpoint import export_checkpoint

    source = folder.with_name(folder.name + "-source")
    source.mkdir()
    [ckpt] = write_ckpt(source)
    export_checkpoint(ckpt, folder)
    return sorted(folder.iterdir())


def safetensors_structure(data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    """Change one value of the safetensors header (dtypes, shapes, offsets), keep the data."""
    (n,) = struct.unpack("<Q", data[:8])
    header = mutate_tree(json.loads(data[8 : 8 + n]), rng, marker)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def export_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    info = json.loads((folder / "ssal.json").read_text())
    weights = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [2**40]
    huge = json.dumps(header).encode()
    return [
        ("num_classes 10**9", "ssal.json", json.dumps({**info, "num_classes": 10**9}).encode()),
        ("info nested 100000 deep", "ssal.json", b"[" * 100_000 + b"]" * 100_000),
        ("header length 2**63", "model.safetensors", struct.pack("<Q", 2**63) + weights[8:]),
        ("a tensor of 2**40 elements", "model.safetensors", struct.pack("<Q", len(huge)) + huge + weights[8 + n :]),
        ("a pickle", "model.safetensors", pickle.dumps(touch(marker))),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Shard folders (meta.json and WebDataset tars)
# --------------------------------------------------------------------------------------------


def write_shards(folder: Path) -> list[Path]:
    from ssal.data.shards import convert_to_shards

    source = folder.with_name(folder.name + "-source")
    write_cifar100(source, n_train=40, n_test=20)
    convert_to_shards("cifar100", source, folder, shard_size=16, heldout=0.25)
    return sorted(folder.iterdir())


def read_shards(folder: Path) -> Any:
    from ssal.data.shards import ShardDataModule

    with chdir(folder):  # "." joined to a shard name is that name: `pipe:` must stay refused
        dm = ShardDataModule(".", batch_size=8, eval_batch_size=8, num_workers=0)
        batches = []
        for split in ("test", "heldout", "train"):
            batches += list(dm._loader(split, split == "train"))
    return batches


def check_shards(batches: Any) -> None:
    for images, labels in batches:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        assert len(labels) == len(images) and all(0 <= int(v) < 100 for v in labels)


def tar_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def shard_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    if path.suffix == ".json":
        return json_structure(path, data, rng, marker)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    name = list(members)[int(rng.integers(0, len(members)))]
    action = rng.random()
    if action < 0.2:
        del members[name]
    elif action < 0.4:
        members[name.rsplit(".", 1)[0] + ".txt"] = members.pop(name)
    elif action < 0.6 and name.endswith(".cls"):
        members[name] = str(random_value(rng, marker)).encode()
    else:
        kind = ["truncate", "random", "bitflip", "sizes"][int(rng.integers(0, 4))]
        members[name] = mutate(members[name], kind, rng)
    return tar_of(members)


def shards_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    meta = json.loads((folder / "meta.json").read_text())

    def with_train(**entry: Any) -> bytes:
        splits = {**meta["splits"], "train": {**meta["splits"]["train"], **entry}}
        return json.dumps({**meta, "splits": splits}).encode()

    first = meta["splits"]["test"]["shards"][0]
    with tarfile.open(folder / first) as tar:
        key = tar.getmembers()[0].name.split(".")[0]
    bomb = png_of(100_000, 100_000)
    return [
        ("shard named pipe:", "meta.json", with_train(shards=[f"pipe:touch {marker}"])),
        ("absolute shard path", "meta.json", with_train(shards=["/etc/passwd"])),
        ("shard outside the folder", "meta.json", with_train(shards=["../outside.tar"])),
        ("10**15 samples", "meta.json", with_train(samples=10**15)),
        ("image size 10**6", "meta.json", json.dumps({**meta, "image_size": 10**6}).encode()),
        ("1000 channels", "meta.json", json.dumps({**meta, "in_channels": 1000}).encode()),
        ("PNG of 100000 x 100000", first, tar_of({f"{key}.png": bomb, f"{key}.cls": b"1"})),
        ("label 150 of 100", first, tar_of({f"{key}.png": png_of(32, 32, bytes(32 * 97)), f"{key}.cls": b"150"})),
        ("a pickle member", first, tar_of({f"{key}.pyd": pickle.dumps(touch(marker)), f"{key}.cls": b"1"})),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Confusion matrices (ssal group --confusion) and configs (ssal fit --config), via the CLI
# --------------------------------------------------------------------------------------------


def write_confusion(folder: Path) -> list[Path]:
    np.save(folder / "c.npy", np.random.default_rng(0).uniform(size=(8, 8)))
    return [folder / "c.npy"]


def read_confusion(folder: Path) -> int:
    from ssal.cli import main

    out = folder / "g.json"
    return main(["group", "--confusion", str(folder / "c.npy"), "--groups", "3", "--out", str(out)])


def check_confusion(folder: Path) -> None:
    from ssal.grouping import load_groupings

    [g], _ = load_groupings(folder / "g.json")
    assert g.num_groups == 3


def npy_of(descr: str, shape: Any, fortran: bool = False, body: bytes = b"") -> bytes:
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body


def npy_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    descrs = ["<f8", "<f4", "|u1", "<c16", "|O", "|b1", "<i8", "<M8[s]", "|V8", "<U2"]
    shapes = [(8, 8), (8,), (2, 8, 8), (0, 0), (2**31, 2**31), (8, 9), (), (1, 1)]
    descr = descrs[int(rng.integers(0, len(descrs)))]
    shape = shapes[int(rng.integers(0, len(shapes)))]
    body = data[128:]
    if rng.random() < 0.3:
        body = body[: int(rng.integers(0, len(body) + 1))]
    return npy_of(descr, shape, bool(rng.random() < 0.2), body)


def confusion_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    out = io.BytesIO()
    np.save(out, np.array([touch(marker)], dtype=object), allow_pickle=True)
    archive = io.BytesIO()
    np.savez(archive, a=np.eye(3))
    nan = np.eye(4)
    nan[0, 1] = np.nan
    nans = io.BytesIO()
    np.save(nans, nan)
    return [
        ("shape 2**31 x 2**31", "c.npy", npy_of("<f8", (2**31, 2**31), body=bytes(64))),
        ("shape 10**5 x 10**5 of bytes", "c.npy", npy_of("|u1", (10**5, 10**5), body=bytes(64))),
        ("pickled object array", "c.npy", out.getvalue()),
        ("an npz archive", "c.npy", archive.getvalue()),
        ("NaN entries", "c.npy", nans.getvalue()),
        ("complex", "c.npy", npy_of("<c16", (2, 2), body=bytes(64))),
        ("a bare pickle", "c.npy", pickle.dumps(touch(marker))),
    ]


def write_config(folder: Path) -> list[Path]:
    logger = {"class_path": "ssal.loggers.ResumableCSVLogger", "init_args": {"save_dir": "runs"}}
    trainer = {"fast_dev_run": 1, "logger": logger}
    return [write_tiny_config(folder / "c.yaml", Path("nodata"), trainer=trainer)]


def read_config(folder: Path) -> int:
    from ssal.cli import main

    with chdir(folder):
        return main(["fit", "--config", str(folder / "c.yaml")])


def yaml_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    doc = mutate_tree(yaml.safe_load(data), rng, marker)
    return yaml.safe_dump(doc).encode()


def config_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    config = (folder / "c.yaml").read_text()
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 11)
    )
    return [
        ("!!python/object/apply", "c.yaml", f'{config}\nx: !!python/object/apply:os.system ["touch {marker}"]\n'.encode()),
        ("!!python/name", "c.yaml", f"{config}\nx: !!python/name:os.system\n".encode()),
        ("!!python/object/new", "c.yaml", f'{config}\nx: !!python/object/new:subprocess.Popen [["touch", "{marker}"]]\n'.encode()),
        ("billion laughs", "c.yaml", f"{config}\n{laughs}trainer: {{max_epochs: *a10}}\n".encode()),
        ("nested 50000 deep", "c.yaml", f"{config}\nx: {'[' * 50_000}{']' * 50_000}\n".encode()),
        ("32 MiB of comments", "c.yaml", config.encode() + b"#" * (32 << 20)),
        ("a callback that runs a command", "c.yaml", config.replace("trainer:\n", f"trainer:\n  callbacks: [{{class_path: subprocess.Popen, init_args: {{args: [touch, {marker}]}}}}]\n", 1).encode()),
        ("not UTF-8", "c.yaml", b"\xff\xfe" + config.encode()),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The table and the tests
# --------------------------------------------------------------------------------------------

READERS = [
    Reader("cifar100", write_cifar100_small, read_cifar("cifar100"), check_cifar(100), cifar_structure, cifar_crafted),
    Reader("cifar10-python2", write_cifar10_small, read_cifar("cifar10"), check_cifar(10), cifar_structure, lambda f, m: []),
    Reader("fashion-mnist-idx", write_fashion, read_fashion, check_fashion, idx_structure, idx_crafted),
    Reader("image-file", write_images, read_images, check_images, None, image_crafted("a.png")),
    Reader("image-folder", write_folder, read_folder(False), check_folder, None, image_crafted("val/cat/0.jpg"), weight=0.5),
    Reader("image-folder-device", write_folder, read_folder(True), check_folder, None, image_crafted("train/dog/2.jpg"), weight=0.5),
    Reader("groupings-json", write_groupings, read_groupings, check_groupings, json_structure, groupings_crafted, weight=2),
    Reader("checkpoint", write_ckpt, read_ckpt, check_predictions, ckpt_structure, ckpt_crafted),
    Reader("export-folder", write_export, read_ckpt, check_predictions, json_structure, export_crafted),
    Reader("shards", write_shards, read_shards, check_shards, shard_structure, shards_crafted, weight=0.5),
    Reader("confusion-npy", write_confusion, read_confusion, check_confusion, npy_structure, confusion_crafted, cli=True),
    Reader("config-yaml", write_config, read_config, lambda folder: None, yaml_structure, config_crafted, cli=True, weight=0.34),
]  # fmt: skip


@pytest.fixture(scope="session")
def marker(tmp_path_factory) -> Path:
    """The file every payload tries to create; it must never appear."""
    return tmp_path_factory.mktemp("marker") / "PAYLOAD-RAN"


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Any:
    """``pristine(reader)``: a folder with a valid input (written once) and its target files."""
    cache: dict[str, tuple[Path, list[str]]] = {}

    def get(reader: Reader) -> tuple[Path, list[str]]:
        if reader.name not in cache:
            folder = tmp_path_factory.mktemp("inputs") / reader.name
            folder.mkdir()
            targets = [str(p.relative_to(folder)) for p in reader.write(folder)]
            cache[reader.name] = folder, targets
        return cache[reader.name]

    return get


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
def test_mutated_files(reader, kind, pristine, fuzz_cases, marker, tmp_path, capsys):
    if kind == "structure" and reader.structure is None:
        pytest.skip(f"{reader.name} has no structure-aware mutation")
    folder, targets = pristine(reader)
    for case in range(case_count(fuzz_cases, reader)):
        seed = [zlib.crc32(reader.name.encode()), KINDS.index(kind), case]
        rng = np.random.default_rng(seed)
        target = targets[int(rng.integers(0, len(targets)))]
        data = (folder / target).read_bytes()
        if kind == "structure":
            data = reader.structure(folder / target, data, rng, str(marker))
        else:
            data = mutate(data, kind, rng)
        label = f"{reader.name}, {kind}, seed {seed}, {target}"
        run_case(reader, folder, tmp_path / f"case{case}", target, data, marker, capsys, label)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
def test_crafted_files(reader, pristine, marker, tmp_path, capsys):
    folder, _ = pristine(reader)
    for i, (label, target, data) in enumerate(reader.crafted(folder, str(marker))):
        run_case(reader, folder, tmp_path / f"case{i}", target, data, marker, capsys, label)


def test_mutations_are_seeded():
    data = bytes(range(256)) * 4
    for kind in KINDS[:-1]:
        a = mutate(data, kind, np.random.default_rng([1, 2]))
        assert a == mutate(data, kind, np.random.default_rng([1, 2]))
        assert a != data
