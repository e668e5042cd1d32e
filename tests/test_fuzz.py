"""Every reader of user files, fuzzed: truncated, random, bit-flipped, huge declared sizes,
structure-aware changes and crafted payloads end in a correct result or one clear line.

The table ``READERS`` holds one entry per reader (``tests/fuzzing.py`` runs them). An ordinary
run takes ``fuzzing.CI_CASES`` seeded cases per reader and mutation kind (times the reader's
``weight``); a deeper run, for release checks, is ``pytest -m fuzz --fuzz-cases 500`` (or
``SSAL_FUZZ_CASES=500``). ``SSAL_FUZZ_VERBOSE=1`` prints what every case gave (with ``-s``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import shutil
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import write_tiny_config
from tests.fuzzing import (
    INTERESTING,
    KINDS,
    Reader,
    case_count,
    mutate,
    mutate_tree,
    random_value,
    read_guarded,
    run_case,
)
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


def cifar_crafted(layout: str) -> Any:
    """Code-running globals (alone and among valid arrays) and allocations the file cannot
    back: huge arrays, memo indices, strings, ``bytes(n)``, opcode floods."""
    if layout == "cifar100":
        base, meta_file, train, test = "cifar-100-python", "meta", "train", "test"
        meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
        valid = {b"fine_labels": [1, 2], b"coarse_labels": [0, 0], b"data": pixel_rows(0, 2)}
    else:
        base, meta_file = "cifar-10-batches-py", "batches.meta"
        train, test = "data_batch_2", "test_batch"
        meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
        valid = {b"labels": [1, 2], b"data": pixel_rows(0, 2)}
    meta_file, train, test = f"{base}/{meta_file}", f"{base}/{train}", f"{base}/{test}"
    huge = b"\x8a\x06\x00\x00\x00\x00\x00\x01"  # LONG1: 2**40
    reconstruct = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    dtype = b"cnumpy\ndtype\nU\x02u1\x89\x88\x87R"
    array_of_huge = (
        b"}(U\x04data", reconstruct, b"K\x00\x85U\x01b\x87R(K\x01", huge, b"\x85",
        dtype, b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x04abcdtbu",
    )  # fmt: skip

    def crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
        system = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
        codecs = b"c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R"
        objects = {**valid, b"data": np.array([1, 2], dtype=object)}
        return [
            ("meta: os.system", meta_file, pickle.dumps(touch(marker), protocol=2)),
            ("meta: exec", meta_file, pickle.dumps(exec_touch(marker))),
            ("meta with one payload", meta_file, pickle.dumps({**meta, b"x": touch(marker)})),
            ("arrays and a payload", train, pickle.dumps({**valid, b"e": touch(marker)})),
            (
                "arrays and a payload in a list, protocol 2",
                test,
                pickle.dumps({**valid, b"e": [exec_touch(marker)]}, protocol=2),
            ),
            ("python 2 GLOBAL os.system", meta_file, system),
            ("numpy.ndarray called", train, pickle_ops(b"cnumpy\nndarray\n", huge, b"\x85R")),
            ("_reconstruct of 2**40", train, pickle_ops(reconstruct, huge, b"\x85U\x01b\x87R")),
            ("array state of 2**40 elements, 4 bytes", train, pickle_ops(*array_of_huge)),
            ("memo index 2**31", meta_file, pickle_ops(b"]r\xff\xff\xff\x7f")),
            ("string of 2 GB declared", meta_file, pickle_ops(b"T\xff\xff\xff\x7fabc")),
            ("bytes(2**40)", meta_file, pickle_ops(b"c__builtin__\nbytes\n", huge, b"\x85R")),
            ("_codecs.encode with zlib", meta_file, pickle_ops(codecs)),
            ("object array", train, pickle.dumps(objects)),
            ("3 million empty lists", meta_file, pickle_ops(b"(", b"]" * 3_000_000, b"l")),
            ("nested 100000 deep", meta_file, pickle_ops(b"]" * 100_000, b"a" * 99_999)),
        ]

    return crafted


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
    huge_dims = struct.pack(">IIII", 0x0803, 2**32 - 1, 2**32 - 1, 28)
    many = gzip.compress(struct.pack(">IIII", 0x0803, 2**31, 28, 28))
    many_labels = gzip.compress(struct.pack(">II", 0x0801, 2**32 - 1) + bytes(64))
    return [
        ("dims 2**32-1 uncompressed", "t10k-images-idx3-ubyte", huge_dims),
        ("dims 2**31 gzipped", images, many),
        ("labels 2**32-1 gzipped", labels, many_labels),
        ("4 GiB of zeros after the data (gzip bomb)", images, bomb),
        ("a pickle instead", images, pickle.dumps(touch(marker))),
    ]


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
    from ssal.card import Preprocessing
    from ssal.inference import load_image

    prep = Preprocessing((0.5,) * 3, (0.25,) * 3, 36, (32, 32))
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


def image_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    """PNGs: one chunk's body mutated (sizes in IHDR, compressed rows, palettes) and its CRC
    written anew, so that the decoder, not the checksum, meets the change. Other formats:
    planted sizes."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return mutate(data, "sizes", rng)
    chunks, at = [], 8
    while at + 8 <= len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        chunks.append([data[at + 4 : at + 8], data[at + 8 : at + 8 + n]])
        at += 12 + n
    k = int(rng.integers(0, len(chunks)))
    kind = ["sizes", "bitflip", "truncate", "splice"][int(rng.integers(0, 4))]
    chunks[k][1] = mutate(chunks[k][1], kind, rng)
    return data[:8] + b"".join(png_chunk(kind, body) for kind, body in chunks)


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


TEXT_GROUPINGS = "cifar10_3_group_similar_v2.txt"


def write_group_text(folder: Path) -> list[Path]:
    """The authors' format: one group index per line, written by ``numpy.savetxt``."""
    np.savetxt(folder / TEXT_GROUPINGS, np.arange(10) % 3)
    return [folder / TEXT_GROUPINGS]


def read_group_text(folder: Path) -> Any:
    from ssal.grouping import load_groupings

    path = folder / TEXT_GROUPINGS
    return load_groupings(path), load_groupings(path, num_classes=10)


def text_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    """Replace, delete or repeat one line, or give it an odd value."""
    lines = data.decode().splitlines()
    k = int(rng.integers(0, len(lines)))
    odd = ["1e400", "nan", "inf", "-1", "2.5", "1e30", "", "0 1", "x", "#", "1.0e+00", marker]
    odd += [str(2**63), "9" * 400, "0x1", "1_0", "{"]
    action = rng.random()
    if action < 0.2:
        del lines[k]
    elif action < 0.3:
        lines[k:k] = [lines[k]] * int(rng.integers(1, 4))
    else:
        lines[k] = odd[int(rng.integers(0, len(odd)))]
    return "\n".join(lines).encode()


def group_text_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    return [
        ("a million lines", TEXT_GROUPINGS, b"0\n1\n" * 500_000),
        ("17 MiB", TEXT_GROUPINGS, b"0\n" * (17 << 19)),
        ("a line of 100000 digits", TEXT_GROUPINGS, b"0\n" + b"9" * 100_000 + b"\n"),
        ("group 2**62", TEXT_GROUPINGS, b"0\n4.611686018427387904e+18\n"),
        ("a pickle", TEXT_GROUPINGS, pickle.dumps(touch(marker))),
        ("YAML with a tag", TEXT_GROUPINGS, f"!!python/object/apply:os.system [{marker}]".encode()),
        ("empty", TEXT_GROUPINGS, b""),
    ]


# --------------------------------------------------------------------------------------------
# Checkpoints and export folders
# --------------------------------------------------------------------------------------------


def write_ckpt(folder: Path) -> list[Path]:
    """An untrained small-cnn checkpoint (1 channel, 28 x 28, two branches) as ssal writes it."""
    net, card = small_card()
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    path = folder / "model.ckpt"
    torch.save({"state_dict": state, "ssal": card.to_dict(), "epoch": 3, "global_step": 30}, path)
    return [path]


def small_card() -> Any:
    """An untrained small-cnn (1 channel, 28 x 28, two branches) and its card."""
    from ssal import create_model
    from ssal.card import ModelCard, Preprocessing
    from ssal.grouping import Grouping

    groupings = [Grouping(np.arange(10) % 2, name="a"), Grouping(np.arange(10) % 5, name="b")]
    net = create_model("small-cnn", 10, groupings, in_channels=1)
    names = [f"c{i}" for i in range(10)]
    data = {"class_path": "ssal.data.InMemoryDataModule", "init_args": {"dataset": "fashion-mnist"}}
    prep = Preprocessing.for_eval([0.3], [0.4])
    card = ModelCard.of(
        net,
        "small-cnn",
        10,
        prep,
        branch_weights=[1.0, 1.0],
        alpha=0.3,
        class_names=names,
        data=data,
    )
    return net, card


def read_model(folder: Path) -> Any:
    """``model.ckpt`` in ``folder``, else the folder as an export, loaded as ``ssal predict``
    loads it, then two images predicted."""
    from ssal.inference import load_model, predict_tensors

    target = folder / "model.ckpt" if (folder / "model.ckpt").exists() else folder
    model, card = load_model(target)
    c, h, w = card.input_size
    images = torch.randint(0, 256, (2, c, h, w), dtype=torch.uint8)
    return predict_tensors(model, card, images, top_k=2)


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


CKPT = "model.ckpt"


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

    legacy = {"_use_new_zipfile_serialization": False}
    zipped = io.BytesIO()
    with zipfile.ZipFile(folder / "model.ckpt") as src, zipfile.ZipFile(zipped, "w") as dst:
        for item in src.infolist():
            body = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                body = pickle.dumps(touch(marker), protocol=2)
            dst.writestr(item, body)
    return [
        ("payload in the ssal section", CKPT, saved({"ssal": touch(marker), "state_dict": {}})),
        ("payload, legacy format", CKPT, saved({"ssal": exec_touch(marker)}, **legacy)),
        ("a bare pickle", CKPT, pickle.dumps(touch(marker))),
        ("data.pkl replaced", CKPT, zipped.getvalue()),
        *((label, CKPT, ckpt_with(folder, **changes)) for label, changes in CARD_CHANGES),
        ("a tensor in the card", CKPT, ckpt_with(folder, data={"x": torch.zeros(2)})),
    ]  # fmt: skip


CARD_CHANGES = [  # crafted model cards: each a change to a valid one (checkpoints, card files)
    ("num_classes 10**9", {"num_classes": 10**9}),
    ("num_classes 10**9, no names", {"num_classes": 10**9, "class_names": None}),
    ("input_size 10**6 a side", {"input_size": [1, 10**6, 10**6]}),
    ("resize to 10**6", {"preprocessing": {"mean": [0.5], "std": [0.5], "resize": 10**6}}),
    ("no preprocessing", {"preprocessing": None}),
    ("groupings of 10**5 groups", {"groupings": [{"assignment": list(range(10**5))}]}),
    ("a grouping of 12 classes", {"groupings": [{"assignment": [0, 1] * 6}]}),
    ("num_groups 2**40", {"groupings": [{"assignment": [0, 1] * 5, "num_groups": 2**40}]}),
    ("alpha as text", {"alpha": "0.3"}),
    ("alpha NaN", {"alpha": float("nan")}),
    ("class names as a number", {"class_names": 12}),
    ("schema 3 (older)", {"schema": 3}),
    ("schema as text", {"schema": "4"}),
    ("epoch -1", {"epoch": -1}),
    ("data as a list", {"data": [1, 2]}),
]


def write_card(folder: Path) -> list[Path]:
    from ssal.files import write_json

    return [write_json(folder / "card.json", small_card()[1].to_dict())]


def read_card(folder: Path) -> Any:
    """``card.json`` read as every reader of checkpoints and exports reads its card."""
    from ssal.card import ModelCard
    from ssal.files import read_json

    path = folder / "card.json"
    return ModelCard.from_dict(read_json(path), path)


def check_card(card: Any) -> None:
    """A card that was read has typed, consistent values and survives a JSON round trip."""
    from ssal.card import MAX_INPUT_SIDE, ModelCard
    from ssal.grouping import Grouping

    assert isinstance(card, ModelCard) and isinstance(card.model, str)
    assert len(card.input_size) == 3 and 1 <= card.input_size[0] <= 4
    assert all(1 <= s <= MAX_INPUT_SIDE for s in card.input_size[1:])
    assert len(card.preprocessing.mean) == len(card.preprocessing.std) == card.input_size[0]
    assert all(
        isinstance(g, Grouping) and g.num_classes == card.num_classes for g in card.groupings
    )
    assert card.class_names is None or len(card.class_names) == card.num_classes
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict())), "again") == card


def card_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    card = json.loads((folder / "card.json").read_text())
    return [
        *((label, "card.json", json.dumps({**card, **c}).encode()) for label, c in CARD_CHANGES),
        ("a list, not a card", "card.json", b"[1, 2]"),
        ("nested 100000 deep", "card.json", b"[" * 100_000 + b"]" * 100_000),
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
    huge_tensor = struct.pack("<Q", len(huge)) + huge + weights[8 + n :]
    return [
        ("num_classes 10**9", "ssal.json", json.dumps({**info, "num_classes": 10**9}).encode()),
        ("info nested 100000 deep", "ssal.json", b"[" * 100_000 + b"]" * 100_000),
        ("header length 2**63", "model.safetensors", struct.pack("<Q", 2**63) + weights[8:]),
        ("a tensor of 2**40 elements", "model.safetensors", huge_tensor),
        ("a pickle", "model.safetensors", pickle.dumps(touch(marker))),
    ]


def write_onnx(folder: Path) -> list[Path]:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from ssal.checkpoint import export_checkpoint

    source = folder.with_name(folder.name + "-source")
    source.mkdir()
    [ckpt] = write_ckpt(source)
    export_checkpoint(ckpt, folder, format="onnx")
    return sorted(folder.iterdir())


def onnx_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    """ssal.json: a changed value; model.onnx: parsed, one initializer's dims, a node's
    operator or attribute, an output's name or the input's shape changed, written again."""
    if path.suffix == ".json":
        return json_structure(path, data, rng, marker)
    import onnx

    model = onnx.load_from_string(data)
    graph, pick = model.graph, lambda n: int(rng.integers(0, n))
    action = rng.random()
    if action < 0.3:
        tensor = graph.initializer[pick(len(graph.initializer))]
        choices = [[2**40], [0], [1, 2**31], list(tensor.dims)[::-1], []]
        tensor.dims[:] = choices[pick(len(choices))]
    elif action < 0.45:
        ops = ["Loop", "Foo", "ConstantOfShape", "Identity", "Reshape", "Expand", "Scan"]
        graph.node[pick(len(graph.node))].op_type = ops[pick(len(ops))]
    elif action < 0.6:
        nodes = [node for node in graph.node if node.attribute]
        attribute = nodes[pick(len(nodes))].attribute[0]
        attribute.i = INTERESTING[pick(len(INTERESTING))] % 2**63
        attribute.ints[:] = [INTERESTING[pick(len(INTERESTING))] % 2**63 for _ in attribute.ints]
    elif action < 0.75:
        graph.output[pick(len(graph.output))].name = ["x", "", "logits", marker][pick(4)]
    else:
        dims = graph.input[0].type.tensor_type.shape.dim
        dims[pick(len(dims))].dim_value = [0, 1, 3, 2**31, 2**40][pick(5)]
    return model.SerializeToString()


def onnx_graph(output: Any, initializers: list[Any] = ()) -> bytes:
    """A one-input graph for 1 x 28 x 28 images whose three outputs are ``output(x)``."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 28, 28])
    nodes, names = output()
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
    graph = helper.make_graph(nodes, "g", [x], outs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def onnx_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    heads = ["logits", "branch1", "branch2"]

    def copies(source: str) -> Any:
        return lambda: ([helper.make_node("Identity", [source], [h]) for h in heads], heads)

    def flat() -> Any:
        shape = helper.make_node("Constant", [], ["s"], value_ints=[0, -1])
        nodes = [shape, *(helper.make_node("Reshape", ["images", "s"], [h]) for h in heads)]
        return nodes, heads

    def external(location: str) -> Any:
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
        weight.data_location = TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", location
        return weight

    huge = helper.make_tensor("n", TensorProto.INT64, [2], [2**20, 2**20])
    fill = lambda: ([helper.make_node("ConstantOfShape", ["n"], [h]) for h in heads], heads)  # noqa: E731
    info = json.loads((folder / "ssal.json").read_text())

    def heads_named(*names: str) -> bytes:
        return json.dumps({**info, "onnx_heads": list(names)}).encode()

    outside = onnx_graph(copies("w"), [external("../../../../etc/passwd")])
    zero = onnx_graph(copies("w"), [external("/dev/zero")])
    return [
        ("outputs of (N, 784)", "model.onnx", onnx_graph(flat)),
        ("outputs of 2**40 elements", "model.onnx", onnx_graph(fill, [huge])),
        ("external data outside the folder", "model.onnx", outside),
        ("external data from /dev/zero", "model.onnx", zero),
        ("outputs named otherwise", "ssal.json", heads_named("a", "b", "c")),
        ("one head for two groupings", "ssal.json", heads_named("logits")),
        ("a pickle", "model.onnx", pickle.dumps(touch(marker))),
        ("empty", "model.onnx", b""),
    ]  # fmt: skip


def read_export_command(folder: Path) -> int:
    from ssal.cli import main

    out = folder / "out"
    return main(["export", "--checkpoint", str(folder / CKPT), "--out", str(out)])


def check_export_command(folder: Path) -> None:
    check_predictions(read_model(folder / "out"))


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
    label_150 = {f"{key}.png": png_of(32, 32, bytes(32 * 97)), f"{key}.cls": b"150"}
    pickled = {f"{key}.pyd": pickle.dumps(touch(marker)), f"{key}.cls": b"1"}
    return [
        ("shard named pipe:", "meta.json", with_train(shards=[f"pipe:touch {marker}"])),
        ("absolute shard path", "meta.json", with_train(shards=["/etc/passwd"])),
        ("shard outside the folder", "meta.json", with_train(shards=["../outside.tar"])),
        ("10**15 samples", "meta.json", with_train(samples=10**15)),
        ("image size 10**6", "meta.json", json.dumps({**meta, "image_size": 10**6}).encode()),
        ("1000 channels", "meta.json", json.dumps({**meta, "in_channels": 1000}).encode()),
        ("PNG of 100000 x 100000", first, tar_of({f"{key}.png": bomb, f"{key}.cls": b"1"})),
        ("label 150 of 100", first, tar_of(label_150)),
        ("a pickle member", first, tar_of(pickled)),
    ]


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
    """A one-batch run (``fast_dev_run``) on tiny CIFAR-100 files in ``data/`` of the folder."""
    write_cifar100(folder / "data", n_train=40, n_test=10)
    logger = {"class_path": "ssal.loggers.ResumableCSVLogger", "init_args": {"save_dir": "runs"}}
    trainer = {"fast_dev_run": 1, "logger": logger}
    return [write_tiny_config(folder / "c.yaml", Path("data"), trainer=trainer)]


def check_config(folder: Path) -> None:
    """A run that ends well leaves checkpoints that load."""
    from ssal.checkpoint import load_checkpoint

    for path in folder.rglob("*.ckpt"):
        load_checkpoint(path)


def read_config(folder: Path) -> int:
    """``ssal fit`` with the config, held to two batches (a config may rightly ask for days of
    training: the fuzzer checks reading, not patience)."""
    from ssal.cli import main

    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    short += ["--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2"]
    with chdir(folder):
        return main(["fit", "--config", str(folder / "c.yaml"), *short])


def yaml_structure(path: Path, data: bytes, rng: np.random.Generator, marker: str) -> bytes:
    doc = mutate_tree(yaml.safe_load(data), rng, marker)
    return yaml.safe_dump(doc).encode()


def config_crafted(folder: Path, marker: str) -> list[tuple[str, str, bytes]]:
    config = (folder / "c.yaml").read_text()
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 11)
    )
    popen = f"{{class_path: subprocess.Popen, init_args: {{args: [touch, {marker}]}}}}"
    callback = config.replace("trainer:\n", f"trainer:\n  callbacks: [{popen}]\n", 1)
    data = config.split("data:\n")[0] + f"data: {popen}\nmodel:\n" + config.split("model:\n")[1]

    def tagged(tag: str) -> bytes:
        return f"{config}\nx: {tag}\n".encode()

    shell, argv = f'"touch {marker}"', f'["touch", "{marker}"]'
    return [
        ("!!python/object/apply", "c.yaml", tagged(f"!!python/object/apply:os.system [{shell}]")),
        ("!!python/name", "c.yaml", tagged("!!python/name:os.system")),
        ("!!python/object/new", "c.yaml", tagged(f"!!python/object/new:subprocess.Popen [{argv}]")),
        ("billion laughs", "c.yaml", f"{config}\n{laughs}trainer: {{max_epochs: *a10}}\n".encode()),
        ("nested 50000 deep", "c.yaml", tagged(f"{'[' * 50_000}{']' * 50_000}")),
        ("32 MiB of comments", "c.yaml", config.encode() + b"#" * (32 << 20)),
        ("a callback that runs a command", "c.yaml", callback.encode()),
        ("data that runs a command", "c.yaml", data.encode()),
        ("not UTF-8", "c.yaml", b"\xff\xfe" + config.encode()),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The table and the tests
# --------------------------------------------------------------------------------------------

READERS = [
    Reader(
        "cifar100",
        write_cifar100_small,
        read_cifar("cifar100"),
        check_cifar(100),
        cifar_structure,
        cifar_crafted("cifar100"),
    ),
    Reader(
        "cifar10-python2",
        write_cifar10_small,
        read_cifar("cifar10"),
        check_cifar(10),
        cifar_structure,
        cifar_crafted("cifar10"),
    ),
    Reader(
        "fashion-mnist-idx",
        write_fashion,
        read_fashion,
        check_fashion,
        idx_structure,
        idx_crafted,
    ),
    Reader(
        "image-file",
        write_images,
        read_images,
        check_images,
        image_structure,
        image_crafted("a.png"),
    ),
    Reader(
        "image-folder",
        write_folder,
        read_folder(False),
        check_folder,
        image_structure,
        image_crafted("val/cat/0.jpg"),
        weight=0.5,
    ),
    Reader(
        "image-folder-device",
        write_folder,
        read_folder(True),
        check_folder,
        image_structure,
        image_crafted("train/dog/2.jpg"),
        weight=0.5,
    ),
    Reader(
        "groupings-json",
        write_groupings,
        read_groupings,
        check_groupings,
        json_structure,
        groupings_crafted,
        weight=2,
    ),
    Reader(
        "groupings-text",
        write_group_text,
        read_group_text,
        check_groupings,
        text_structure,
        group_text_crafted,
        weight=2,
    ),
    Reader(
        "model-card",
        write_card,
        read_card,
        check_card,
        json_structure,
        card_crafted,
    ),
    Reader(
        "checkpoint",
        write_ckpt,
        read_model,
        check_predictions,
        ckpt_structure,
        ckpt_crafted,
    ),
    Reader(
        "export-folder",
        write_export,
        read_model,
        check_predictions,
        json_structure,
        export_crafted,
    ),
    Reader(
        "onnx-export",
        write_onnx,
        read_model,
        check_predictions,
        onnx_structure,
        onnx_crafted,
    ),
    Reader(
        "export-command",
        write_ckpt,
        read_export_command,
        check_export_command,
        ckpt_structure,
        ckpt_crafted,
        cli=True,
        weight=0.5,
    ),
    Reader(
        "shards",
        write_shards,
        read_shards,
        check_shards,
        shard_structure,
        shards_crafted,
        weight=0.5,
    ),
    Reader(
        "confusion-npy",
        write_confusion,
        read_confusion,
        check_confusion,
        npy_structure,
        confusion_crafted,
        cli=True,
    ),
    Reader(
        "config-yaml",
        write_config,
        read_config,
        check_config,
        yaml_structure,
        config_crafted,
        cli=True,
        weight=0.34,
    ),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Every case is a small input: one torch thread reads it as fast as two, and cases stay
    within their time bound while other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
def test_valid_input_reads(reader, pristine, tmp_path, capsys):
    """The fuzzer's starting point is read correctly: its cases start from a working input."""
    folder, _ = pristine(reader)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    outcome, _ = read_guarded(reader, copy, capsys)
    if reader.cli:
        assert outcome.code == 0, outcome.stderr
        reader.check(copy)
    else:
        assert outcome.error is None, outcome.error
        reader.check(outcome.result)


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
