"""``ssal data convert``: a dataset as WebDataset shards for streaming."""

from __future__ import annotations

import argparse

from ssal.cli.common import Parser, console

__all__ = ["add_parser", "run_convert"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    p = data_sub.add_parser("convert", help="write a dataset as WebDataset shards for streaming")
    p.add_argument(
        "--dataset", required=True, choices=["cifar10", "cifar100", "fashion-mnist", "imagefolder"]
    )
    p.add_argument("--data-dir", help="dataset folder (imagefolder: with train/ and val/)")
    p.add_argument("--out", required=True, help="new folder for the shards and meta.json")
    p.add_argument("--shard-size", type=int, default=10000, help="images per shard")
    p.add_argument("--heldout", type=float, default=0.0, help="stratified held-out part")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ssal.data.shards import convert_to_shards

    meta = convert_to_shards(
        args.dataset, args.data_dir, args.out, args.shard_size, args.heldout, args.seed
    )
    counts = ", ".join(
        f"{k} {v['samples']} in {len(v['shards'])} shards" for k, v in meta["splits"].items()
    )
    console(stderr=True).print(f"wrote {args.out}: {counts}")
    return 0
