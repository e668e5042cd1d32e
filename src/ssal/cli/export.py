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
    p.add_argument(
        "--format",
        choices=["safetensors", "onnx"],
        default="safetensors",
        help="weights for PyTorch, or the whole model for onnxruntime (one output per head)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssal.checkpoint import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, args.format)
    name = "model.onnx" if args.format == "onnx" else "model.safetensors"
    say(f"wrote {out}/{name} and {out}/ssal.json")
    return 0
