"""``ssal models``: registered models with parameter counts, positions and the paper's numbers."""

from __future__ import annotations

import argparse
import json

from ssal.cli.common import console

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--num-classes", type=int, default=100, help="classes (default 100)")
    p.add_argument(
        "--groups",
        type=int,
        nargs="+",
        default=[20, 33, 50],
        help="groups per branch (default 20 33 50)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssal.backbones.registry import list_models, model_summary

    rows = [model_summary(name, args.num_classes, args.groups) for name in list_models()]
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
    console().print(table)
    return 0
