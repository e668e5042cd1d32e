"""The ``ssal`` command: one function per subcommand.

Errors a user can cause end in one line on stderr and exit code 2 (``--debug`` shows the
traceback). Training subcommands hand over to Lightning's CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["main"]

PAPER_PARAMS = {  # millions, from the paper's table: (baseline, with SSAL branches)
    "resnet50": (23.8, 28.9),
    "sewrn16-8": (11.1, 14.9),
    "wrn28-10": (36.6, 38.2),
    "densenet190-40": (26.1, 38.3),
}


class UserError(Exception):
    """An error the user can fix; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UserError(f"{self.prog}: {message} (see --help)")


def _console(stderr: bool = False):  # noqa: ANN202 - rich is imported lazily
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _write_json(path: str | Path, doc: object) -> Path:
    """Write JSON atomically so an interrupted run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------- models
def model_table(num_classes: int = 100, groups: Sequence[int] = (20, 33, 50)) -> list[dict]:
    """Every registered model with parameter counts as baseline and with SSAL branches."""
    import torch

    from ssal.backbones.registry import _default_groupings, create_model, get_entry, list_models

    rows = []
    for name in list_models():
        entry = get_entry(name)
        with torch.device("meta"):  # count without allocating or initialising weights
            base = create_model(name, num_classes).num_parameters()["total"]
            ssal = create_model(name, num_classes, _default_groupings(num_classes, groups))
        counts = ssal.num_parameters()
        row = {
            "name": name,
            "description": entry.description,
            "input_size": list(entry.input_size),
            "params_baseline": base,
            "params_ssal": counts["total"],
            "params_branches": counts["branches"],
            "positions": list(entry.positions),
            "paper_positions": [list(p) for p in entry.paper_positions],
            "layouts": list(entry.layouts),
            "branch_weights": list(entry.weights),
            "alpha": entry.alpha,
        }
        if name in PAPER_PARAMS:
            row["paper_params_baseline"] = int(PAPER_PARAMS[name][0] * 1e6)
            row["paper_params_ssal"] = int(PAPER_PARAMS[name][1] * 1e6)
        rows.append(row)
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = model_table(args.num_classes, args.groups)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"ssal models ({args.num_classes} classes, groups {args.groups})")
    for col in ("model", "baseline", "SSAL", "paper", "positions (module names)"):
        table.add_column(col, justify="right" if col in ("baseline", "SSAL", "paper") else "left")
    for r in rows:
        paper = r.get("paper_params_baseline")
        table.add_row(
            r["name"],
            f"{r['params_baseline'] / 1e6:.2f}M",
            f"{r['params_ssal'] / 1e6:.2f}M",
            f"{paper / 1e6:.1f}M / {r['paper_params_ssal'] / 1e6:.1f}M" if paper else "",
            " ".join(r["positions"]),
        )
    _console().print(table)
    return 0


# ----------------------------------------------------------------------------------- group
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


def cmd_group(args: argparse.Namespace) -> int:
    from ssal.grouping import Grouping, save_groupings

    if args.checkpoint:
        raise UserError("ssal group --checkpoint needs the training pipeline (ssal fit)")
    confusion = _read_confusion(args.confusion)
    names = _read_names(args.names) if args.names else None
    if names is not None and len(names) != confusion.shape[0]:
        raise ValueError(f"{args.names}: {len(names)} names for {confusion.shape[0]} classes")
    groupings = [
        Grouping.from_confusion(confusion, g, args.mode, args.size_margin, args.seed)
        for g in args.groups
    ]
    out = save_groupings(args.out, groupings, names)
    sizes = ", ".join(
        f"{g.name}: sizes {np.bincount(g.assignment).min()}-{np.bincount(g.assignment).max()}"
        for g in groupings
    )
    _console(stderr=True).print(f"wrote {out} ({sizes})")
    return 0


# ------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ssal", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--groups", type=int, nargs="+", default=[20, 33, 50])
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("group", help="derive groupings from a confusion matrix")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--confusion", help="(C, C) confusion matrix as .npy")
    src.add_argument("--checkpoint", help="baseline checkpoint (confusion on held-out split)")
    p.add_argument("--groups", type=int, nargs="+", required=True, help="numbers of groups")
    p.add_argument("--mode", choices=["similar", "split"], default="similar")
    p.add_argument("--size-margin", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", help="class names: one per line, or a JSON list")
    p.add_argument("--out", required=True, help="groupings JSON file to write")
    p.set_defaults(func=cmd_group)
    return parser


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    return int(func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssal`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return _run(args.func, args)
    except (UserError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if debug:
            raise
        print(f"ssal: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
