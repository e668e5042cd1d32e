"""``ssal group``: groupings from a confusion matrix, from a baseline's held-out confusion, or
from the authors' published groupings (text files), written as one groupings JSON file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ssal.cli.common import UserError, add_data_args, checkpoint_data, device, say, track

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
            raise ValueError(f"{p}: not a JSON list of names ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_confusion(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"confusion matrix file not found: {p}")
    try:
        m = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{p}: not a .npy array ({e})") from None
    if not isinstance(m, np.ndarray):
        raise ValueError(f"{p}: expected one array in .npy format, found an archive")
    return m


def _label_files(paths: list[str], names: list[str] | None) -> list:
    """The authors' groupings files, checked to cover the same classes (``names``' count)."""
    from ssal.grouping import read_label_file

    first = read_label_file(paths[0], len(names) if names is not None else None)
    return [first, *(read_label_file(p, first.num_classes) for p in paths[1:])]


def run(args: argparse.Namespace) -> int:
    from ssal.evaluate import groupings_from_model
    from ssal.grouping import Grouping, save_groupings

    names = _read_names(args.names) if args.names else None
    if bool(args.labels) == bool(args.groups):
        raise UserError(
            "--groups does not apply to --labels"
            if args.labels
            else "--groups is needed with --confusion and --checkpoint"
        )
    if args.labels:
        groupings = _label_files(args.labels, names)
    elif args.checkpoint:
        model, info, dm = checkpoint_data(args)
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
        names = names or info.get("class_names")
        if args.save_confusion:
            np.save(args.save_confusion, confusion)
    else:
        confusion = _read_confusion(args.confusion)
        groupings = [
            Grouping.from_confusion(confusion, g, args.mode, args.size_margin, args.seed)
            for g in args.groups
        ]
    classes = groupings[0].num_classes
    if names is not None and len(names) != classes:
        raise ValueError(f"{args.names}: {len(names)} names for {classes} classes")
    out = save_groupings(args.out, groupings, names)
    label = (lambda c: names[c]) if names is not None else str
    for g in groupings:
        groups = [" + ".join(label(c) for c in g.members(k)) for k in range(g.num_groups)]
        print(f"{g.name}: " + " | ".join(groups))
    say(f"wrote {out}")
    return 0
