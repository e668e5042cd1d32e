"""``ssal group``: groupings from a confusion matrix, from a baseline's held-out confusion, or
from the authors' published groupings (text files), written as one groupings JSON file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ssal.cli.common import add_data_args, checkpoint_data, device, say, track
from ssal.errors import UserError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "group",
        help="derive groupings from a confusion matrix, or read the authors' files",
        description="Group the classes as the paper does: from a baseline's confusion on its "
        "held-out split (--checkpoint), or from a confusion matrix file; or read the authors' "
        "published groupings (--labels).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--confusion", metavar="FILE", help="(C, C) confusion matrix as .npy")
    src.add_argument(
        "--checkpoint", metavar="FILE", help="baseline checkpoint (confusion on held-out split)"
    )
    src.add_argument(
        "--labels",
        nargs="+",
        metavar="FILE",
        help="the authors' groupings, one per branch: text files with the group of class c on "
        "line c (e.g. cifar100_20_group_similar_v2.txt)",
    )
    p.add_argument(
        "--groups",
        type=int,
        nargs="+",
        metavar="G",
        help="numbers of groups (--confusion, --checkpoint)",
    )
    p.add_argument(
        "--mode",
        choices=["similar", "split"],
        default="similar",
        help="similar: confused classes together; split: apart",
    )
    p.add_argument(
        "--size-margin", type=float, default=1.1, metavar="M", help="largest group: M x C / G"
    )
    p.add_argument("--seed", type=int, default=0, help="breaks ties")
    p.add_argument("--names", metavar="FILE", help="class names: one per line, or a JSON list")
    p.add_argument(
        "--classes",
        type=int,
        metavar="C",
        help="the data's number of classes, checked against every grouping (e.g. 100 for "
        "CIFAR-100)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="groupings JSON file to write")
    add_data_args(p)
    p.add_argument(
        "--save-confusion", metavar="FILE", help="with --checkpoint: also save the confusion .npy"
    )
    p.set_defaults(func=run)


def _read_names(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class names file not found: {p}")
    text = p.read_text()
    if text.lstrip().startswith("["):
        try:
            return [str(n) for n in json.loads(text)]
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: not a JSON list of names ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


MAX_CLASSES = 100_000


def _npy_header(p: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, checked against the file's size before any
    array is allocated."""
    from numpy.lib import format as npy

    with open(p, "rb") as f:
        if f.read(6) != npy.MAGIC_PREFIX:
            raise UserError("not a .npy file (wrong magic string)")
        f.seek(0)
        version = npy.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise UserError(f"unknown .npy version {version}")
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(f)
        data = p.stat().st_size - f.tell()
    if dtype.kind not in "biuf":
        raise UserError(f"holds {dtype} values, expected numbers")
    if len(shape) != 2 or shape[0] != shape[1] or not 1 <= shape[0] <= MAX_CLASSES:
        raise UserError(f"shape {shape}, expected a square (C, C) matrix")
    if data != shape[0] * shape[1] * dtype.itemsize:
        raise UserError(
            f"shape {shape} needs {shape[0] ** 2 * dtype.itemsize} bytes, the file "
            f"holds {data}: truncated or corrupt"
        )
    return shape, dtype


def _read_confusion(path: str) -> np.ndarray:
    """A (C, C) confusion matrix of finite non-negative numbers from a ``.npy`` file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"confusion matrix file not found: {p}")
    try:
        _npy_header(p)
        m = np.load(p, allow_pickle=False)
    except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, TokenError
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{p}: not a .npy confusion matrix ({reason})") from None
    m = m.astype(np.float64)
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise UserError(f"{p}: the confusion matrix holds negative, NaN or infinite values")
    return m


def _label_files(paths: list[str], classes: int | None) -> list:
    """The authors' groupings files, checked to cover the same classes (``classes`` of them
    when given)."""
    from ssal.grouping import read_label_file

    first = read_label_file(paths[0], classes)
    return [first, *(read_label_file(p, first.num_classes) for p in paths[1:])]


def run(args: argparse.Namespace) -> int:
    from ssal.evaluate import groupings_from_model
    from ssal.grouping import groupings_from_confusion, save_groupings

    names = _read_names(args.names) if args.names else None
    if args.classes is not None and args.classes < 2:
        raise UserError(f"--classes {args.classes}: a classifier has at least 2 classes")
    expected = args.classes if args.classes is not None else len(names) if names else None
    if bool(args.labels) == bool(args.groups):
        raise UserError(
            "--groups does not apply to --labels"
            if args.labels
            else "--groups is needed with --confusion and --checkpoint"
        )
    if args.labels:
        groupings = _label_files(args.labels, expected)
    elif args.checkpoint:
        model, card, dm = checkpoint_data(args)
        groupings, confusion = groupings_from_model(
            model,
            dm,
            args.groups,
            args.mode,
            args.size_margin,
            args.seed,
            device(args.device),
            track(),
        )
        names = names or card.class_names
        if args.save_confusion:
            np.save(args.save_confusion, confusion)
    else:
        confusion = _read_confusion(args.confusion)
        groupings = groupings_from_confusion(
            confusion, args.groups, args.mode, args.size_margin, args.seed
        )
    classes = groupings[0].num_classes
    if args.classes is not None and classes != args.classes:
        raise UserError(f"the groupings cover {classes} classes, --classes says {args.classes}")
    if names is not None and len(names) != classes:
        raise UserError(f"{args.names}: {len(names)} names for {classes} classes")
    out = save_groupings(args.out, groupings, names)
    label = (lambda c: names[c]) if names is not None else str
    for g in groupings:
        groups = [" + ".join(label(c) for c in g.members(k)) for k in range(g.num_groups)]
        print(f"{g.name}: " + " | ".join(groups))
    say(f"wrote {out}")
    return 0
