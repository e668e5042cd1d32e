"""``ssal export``: a checkpoint's weights as safetensors plus ``ssal.json`` (safe to share)."""

from __future__ import annotations

import argparse

from ssal.cli.common import console

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="weights as safetensors + JSON (safe to share)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="folder to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssal.checkpoint import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    console(stderr=True).print(f"wrote {out}/model.safetensors and {out}/ssal.json")
    return 0
