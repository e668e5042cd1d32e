"""``ssal export``: a checkpoint's weights as safetensors plus ``ssal.json`` (safe to share)."""

from __future__ import annotations

import argparse

from ssal.cli.common import say

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="weights as safetensors + JSON (safe to share)",
        description="Write a checkpoint's weights as model.safetensors and its description "
        "(model, groupings, alpha, class names, preprocessing) as ssal.json: nothing in them "
        "is unpickled when loaded.",
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a checkpoint of ssal fit")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssal.checkpoint import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    say(f"wrote {out}/model.safetensors and {out}/ssal.json")
    return 0
