"""``ssal evaluate``: a checkpoint's figures on the test split, as the paper reports them."""

from __future__ import annotations

import argparse

from ssal.cli.common import (
    add_data_args,
    checkpoint_data,
    device,
    pct,
    show_table,
    track,
    warn,
)
from ssal.errors import UserError
from ssal.files import write_json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint as the paper does",
        description="+TR, +JP, each branch and the paper's set-aside analysis on the test split "
        "(for ssal's datamodules the test split is what training validates on: CIFAR's and "
        "Fashion-MNIST's test sets, an image folder's val/).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help="a .ckpt file or an `ssal export` folder",
    )
    p.add_argument("--alpha", type=float, help="combination factor (default: the checkpoint's)")
    p.add_argument(
        "--tune-alpha", action="store_true", help="choose alpha on the held-out split first"
    )
    p.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    add_data_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssal.evaluate import evaluate_split_pair

    model, card, dm = checkpoint_data(args)
    if args.tune_alpha and not model.num_branches:
        raise UserError("--tune-alpha needs a model with SSAL branches")
    if args.tune_alpha and args.alpha is not None:
        raise UserError("give --alpha or --tune-alpha, not both")
    alpha = args.alpha if args.alpha is not None or args.tune_alpha else card.alpha
    ev = evaluate_split_pair(model, dm, card.alpha, alpha, device(args.device), track())
    result = dict(ev.test)
    result.pop("confusion", None)
    result.update(
        checkpoint=str(args.checkpoint),
        model=card.model,
        epoch=card.epoch,
        alpha_source="checkpoint" if alpha is card.alpha else ev.alpha_source,
        alpha_tuned_on_heldout=bool(args.tune_alpha and model.num_branches),
    )
    if ev.heldout is not None:
        result["heldout_joint_accuracy_by_alpha"] = ev.heldout["joint_accuracy_by_alpha"]
    for w in ev.warnings:
        warn(w)
    if args.json:
        write_json(args.json, result)
    _print(result)
    return 0


def _print(r: dict) -> None:
    rows = [["fine head (+TR)", pct(r["fine_accuracy"])]]
    if r["branch_accuracy"]:
        c = r["set_aside"]
        rows += [[f"joint (+JP), alpha {r['alpha']:g}", pct(r["joint_accuracy"])]]
        rows += [[f"branch {i + 1} (coarse)", pct(a)] for i, a in enumerate(r["branch_accuracy"])]
        rows += [
            ["all heads agree: share of images", pct(c["kept_fraction"])],
            ["all heads agree: accuracy", pct(c["kept_accuracy"])],
            ["set aside: fine head right", pct(c["set_aside_fine_accuracy"])],
        ]
        rows += [
            [f"set aside: branch {i + 1} right", pct(a)]
            for i, a in enumerate(c["set_aside_branch_accuracy"])
        ]
    title = f"{r['model']} on {r['num_samples']} test images"
    show_table(title, ("measure", "value"), rows, right=("value",))
