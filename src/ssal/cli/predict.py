"""``ssal predict``: structured predictions for image files (a table, or JSON)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ssal.cli.common import console, device, pct
from ssal.files import write_json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="structured predictions for image files")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by ssal")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--alpha", type=float, help="combination factor (default: the checkpoint's)")
    p.add_argument("--top-k", type=int, default=1, help="classes listed per head (default 1)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssal.checkpoint import load_checkpoint
    from ssal.inference import predict_images

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    model, info = load_checkpoint(args.checkpoint)
    model = model.to(device(args.device))
    alpha = float(info["alpha"] if args.alpha is None else args.alpha)
    records = predict_images(model, info, args.images, alpha, args.top_k)
    doc = {
        "checkpoint": str(args.checkpoint),
        "model": info["model"],
        "alpha": alpha,
        "groupings": [g.name for g in info["groupings"]],
        "predictions": records,
    }
    if args.out:
        write_json(args.out, doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print(doc)
    return 0


def _print(doc: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"{doc['model']}: structured predictions (alpha {doc['alpha']:g})")
    for col in ("image", "head", "answer", "prob", "agrees"):
        t.add_column(col, justify="right" if col == "prob" else "left")
    answers = lambda head: " / ".join(p["name"] for p in head["top"])  # noqa: E731
    for r in doc["predictions"]:
        f, j = r["fine"], r["joint"]
        t.add_row(r["file"], "fine head", answers(f), pct(f["prob"]), "")
        for b in r["branches"]:
            agrees = "yes" if b["agrees"] else "[red]no[/red]"
            members = "{" + ", ".join(b["members"]) + "}"
            t.add_row(
                "", f"branch {b['branch']} ({b['grouping']})", members, pct(b["prob"]), agrees
            )
        if r["branches"]:
            all_agree = "all agree" if r["consistent"] else "[red]disagree[/red]"
            t.add_row("", "joint (+JP)", answers(j), pct(j["prob"]), all_agree)
        t.rows[-1].end_section = True
    console().print(t)
