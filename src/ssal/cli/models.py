"""``ssal models``: registered models with parameter counts, positions and the paper's numbers."""

from __future__ import annotations

import argparse
import json

from ssal.cli.common import show_table

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list registered models with parameter counts",
        description="Registered models with their parameter counts as a baseline and with SSAL "
        "branches, the paper's numbers and the branch positions (module names).",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--num-classes", type=int, default=100, metavar="N", help="classes")
    p.add_argument(
        "--groups", type=int, nargs="+", default=[20, 33, 50], metavar="G", help="groups per branch"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssal.backbones.registry import list_families, list_models, model_summary

    rows = [model_summary(name, args.num_classes, args.groups) for name in list_models()]
    families = [
        {"name": f["pattern"], "family": True, "example": f["example"]} for f in list_families()
    ]
    if args.json:
        print(json.dumps(rows + families, indent=2))
        return 0
    table = []
    for r in rows:
        paper = r.get("paper_params_baseline")
        table.append(
            [
                r["name"],
                f"{r['params_baseline'] / 1e6:.2f}M",
                f"{r['params_ssal'] / 1e6:.2f}M",
                f"{paper / 1e6:.1f}M / {r['paper_params_ssal'] / 1e6:.1f}M" if paper else "",
                " ".join(r["positions"]),
            ]
        )
    columns = ("model", "baseline", "SSAL", "paper", "positions (module names)")
    title = f"ssal models ({args.num_classes} classes, groups {' '.join(map(str, args.groups))})"
    show_table(title, columns, table, right=("baseline", "SSAL", "paper"))
    rows = [[f["name"], f["example"]] for f in families]
    show_table(
        "families: other numbers, or any timm or torchvision model", ("name", "example"), rows
    )
    return 0
