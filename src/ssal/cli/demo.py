"""``ssal demo``: baseline vs SSAL on Fashion-MNIST, offline, in minutes on two CPU cores."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssal.cli.common import pct, say, show_table, track, warn

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="baseline vs SSAL on Fashion-MNIST, offline, in minutes",
        description="Train a small CNN, group its classes from its held-out confusion, train it "
        "again with SSAL branches, and compare the two on the test set (with an HTML report).",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder")
    p.add_argument("--epochs", type=int, default=2, metavar="N", help="epochs of each model")
    p.add_argument(
        "--train-size", type=int, metavar="N", help="use this many training images (default: all)"
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the Fashion-MNIST *-ubyte.gz files (default: Debian's, or ./data)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds data order and weights")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ssal.demo import run_demo

    torch.set_float32_matmul_precision("high")
    summary = run_demo(
        args.out,
        epochs=args.epochs,
        train_size=args.train_size,
        data_dir=args.data_dir,
        seed=args.seed,
        quiet=args.quiet or not sys.stdout.isatty(),  # bars only where someone watches
        log=print,
        track=track(not args.quiet),
        overwrite=args.overwrite,
    )
    _print(summary)
    for w in summary.get("warnings", []):
        warn(w)
    say(f"wrote {Path(args.out) / 'summary.json'} in {summary['total_seconds']:.0f} s")
    return 0


def _print(s: dict) -> None:
    c = s["set_aside"]
    rows = [
        ["baseline", pct(s["baseline_accuracy"])],
        ["SSAL, fine head (+TR)", pct(s["tr_accuracy"])],
        [f"SSAL, joint (+JP, alpha {s['alpha']:g} from held-out)", pct(s["jp_accuracy"])],
        ["SSAL where all heads agree", pct(c["kept_accuracy"])],
        ["  share of images where they agree", pct(c["kept_fraction"])],
        ["  fine head right where they disagree", pct(c["set_aside_fine_accuracy"])],
    ]
    epochs = f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}"
    title = f"Fashion-MNIST test set ({s['test_size']} images, {epochs})"
    show_table(title, ("model", "accuracy"), rows, right=("accuracy",))
    print(
        "A run this short shows what the branches add (agreement flags doubtful answers); "
        "the paper's 1-2 point gain needs full-length training, so the accuracies above may "
        "go either way."
    )
