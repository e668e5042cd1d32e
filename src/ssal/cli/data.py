"""``ssal data convert``: a dataset as WebDataset shards for streaming."""

from __future__ import annotations

import argparse

from ssal.cli.common import Parser, say

__all__ = ["add_parser", "run_convert"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data tools", description="Data tools.")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    p = data_sub.add_parser(
        "convert",
        help="write a dataset as WebDataset shards for streaming",
        description="Write a dataset as WebDataset shards plus meta.json, to stream from "
        "shared or object storage (ssal.data.ShardDataModule).",
    )
    p.add_argument(
        "--dataset",
        required=True,
        choices=["cifar10", "cifar100", "fashion-mnist", "imagefolder"],
        help="what to convert",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="dataset folder (imagefolder: with train/ and val/)"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="new folder for the shards and meta.json"
    )
    p.add_argument("--shard-size", type=int, default=10000, metavar="N", help="images per shard")
    p.add_argument(
        "--heldout", type=float, default=0.0, help="stratified held-out part (fraction or count)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the held-out split")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ssal.data.shards import convert_to_shards

    meta = convert_to_shards(
        args.dataset, args.data_dir, args.out, args.shard_size, args.heldout, args.seed
    )
    counts = ", ".join(
        f"{k} {v['samples']} in {len(v['shards'])} shards" for k, v in meta["splits"].items()
    )
    say(f"wrote {args.out}: {counts}")
    return 0
