"""``ssal models``: registered models with parameter counts (PyTorch's and Keras' convention),
positions, and the paper's and the authors' numbers."""

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
    p.add_argument(
        "--num-classes", type=int, metavar="N", help="classes (default: each model's paper setting)"
    )
    p.add_argument(
        "--groups",
        type=int,
        nargs="+",
        metavar="G",
        help="groups per branch (default: each model's paper setting, e.g. 20 33 50)",
    )
    p.set_defaults(func=run)


def _millions(a: int | None, b: int | None) -> str:
    return "" if a is None or b is None else f"{a / 1e6:.2f}M / {b / 1e6:.2f}M"


def run(args: argparse.Namespace) -> int:
    from ssal.backbones import list_families, list_models, model_summary

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
        authors = r.get("authors_params_baseline")
        table.append(
            [
                r["name"],
                r["reference"],
                _millions(r["params_baseline"], r["params_baseline_keras"]),
                _millions(r["params_ssal"], r["params_ssal_keras"]),
                f"{paper / 1e6:.1f}M / {r['paper_params_ssal'] / 1e6:.1f}M" if paper else "",
                f"{authors:,} / {r['authors_params_ssal']:,} ({r['authors_count']})"
                if authors
                else "",
                f"{r['num_classes']}, groups {' '.join(map(str, r['groups']))}",
                " ".join(r["positions"]),
            ]
        )
    columns = (
        "model",
        "built as",
        "baseline",
        "with SSAL",
        "paper",
        "authors' code",
        "classes",
        "positions (module names)",
    )
    title = (
        "ssal models: parameters as PyTorch counts them (trainable) / as Keras does (+ batch "
        "norm statistics, the paper's convention)"
    )
    show_table(title, columns, table, right=("baseline", "with SSAL", "paper", "authors' code"))
    rows = [[f["name"], f["example"]] for f in families]
    show_table(
        "families: other numbers, or any timm or torchvision model", ("name", "example"), rows
    )
    return 0
