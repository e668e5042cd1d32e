"""``ssal demo``: baseline vs SSAL on Fashion-MNIST, offline, in minutes on two CPU cores."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssal.cli.common import console, pct, track

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="baseline vs SSAL on Fashion-MNIST, offline, in minutes")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, help="use this many training images")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ssal.demo import run_demo

    torch.set_float32_matmul_precision("high")
    out = console()
    summary = run_demo(
        args.out,
        epochs=args.epochs,
        train_size=args.train_size,
        data_dir=args.data_dir,
        seed=args.seed,
        quiet=args.quiet,
        log=out.print,
        track=track(not args.quiet),
        overwrite=args.overwrite,
    )
    _print(summary)
    for w in summary.get("warnings", []):
        console(stderr=True).print(f"warning: {w}")
    out.print(f"wrote {Path(args.out) / 'summary.json'} in {summary['total_seconds']:.0f} s")
    return 0


def _print(s: dict) -> None:
    from rich.table import Table

    t = Table(title=f"Fashion-MNIST test set ({s['test_size']} images, {s['epochs']} epochs)")
    t.add_column("model")
    t.add_column("accuracy", justify="right")
    t.add_row("baseline", pct(s["baseline_accuracy"]))
    t.add_row("SSAL, fine head (+TR)", pct(s["tr_accuracy"]))
    t.add_row(f"SSAL, joint (+JP, alpha {s['alpha']:g} from held-out)", pct(s["jp_accuracy"]))
    c = s["set_aside"]
    t.add_row("SSAL where all heads agree", pct(c["kept_accuracy"]))
    t.add_row("  share of images where they agree", pct(c["kept_fraction"]))
    t.add_row("  fine head right where they disagree", pct(c["set_aside_fine_accuracy"]))
    out = console()
    out.print(t)
    out.print(
        "A run this short shows what the branches add (agreement flags doubtful answers); "
        "the paper's 1-2 point gain needs full-length training, so the accuracies above may "
        "go either way."
    )
