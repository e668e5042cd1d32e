"""``ssal predict`` and ``ssal report``: what a trained model answers, and why to trust it.

``predict`` prints structured predictions for image files (a table, or JSON with ``--json``);
``report`` writes one self-contained HTML page for one or more run folders, or for a study.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ssal.cli import _console, _data_args, _device, _pct
from ssal.files import write_json

__all__ = ["add_commands", "cmd_predict", "cmd_report"]


def cmd_predict(args: argparse.Namespace) -> int:
    """Structured predictions for image files: a table, ``--json`` on stdout, ``--out`` file."""
    from ssal.predict import predict_images
    from ssal.train import load_checkpoint

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    model, info = load_checkpoint(args.checkpoint)
    model = model.to(_device(args.device))
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
        _print_predictions(doc)
    return 0


def _print_predictions(doc: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"{doc['model']}: structured predictions (alpha {doc['alpha']:g})")
    for col in ("image", "head", "answer", "prob", "agrees"):
        t.add_column(col, justify="right" if col == "prob" else "left")
    answers = lambda head: " / ".join(p["name"] for p in head["top"])  # noqa: E731
    for r in doc["predictions"]:
        f, j = r["fine"], r["joint"]
        t.add_row(r["file"], "fine head", answers(f), _pct(f["prob"]), "")
        for b in r["branches"]:
            agrees = "yes" if b["agrees"] else "[red]no[/red]"
            members = "{" + ", ".join(b["members"]) + "}"
            t.add_row(
                "", f"branch {b['branch']} ({b['grouping']})", members, _pct(b["prob"]), agrees
            )
        if r["branches"]:
            all_agree = "all agree" if r["consistent"] else "[red]disagree[/red]"
            t.add_row("", "joint (+JP)", answers(j), _pct(j["prob"]), all_agree)
        t.rows[-1].end_section = True
    _console().print(t)


# --------------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    """Evaluate run folders (or read a study) and write one HTML report; print the numbers."""
    from ssal.report import write_report
    from ssal.study_report import find_study

    if any(find_study(p) for p in args.runs):
        return _report_study(args)
    path, data = write_report(
        args.runs,
        args.out,
        data_dir=getattr(args, "data.data_dir", None),
        device=_device(args.device),
        batch_size=args.batch_size,
        alpha=args.alpha,
        progress=not args.quiet,
    )
    if args.json:
        write_json(args.json, data)
    _print_report(data)
    _console(stderr=True).print(f"wrote {path}")
    return 0


def _report_study(args: argparse.Namespace) -> int:
    from ssal.cli import print_study
    from ssal.study_report import write_study_report

    if len(args.runs) > 1:
        raise ValueError("give one study folder (or study.json), or run folders without a study")
    path, data, summary = write_study_report(args.runs[0], args.out)
    if args.json:
        write_json(args.json, data)
    print_study(summary)
    _console(stderr=True).print(f"wrote {path}")
    return 0


def _print_report(data: dict[str, Any]) -> None:
    from rich.table import Table

    runs = data["runs"]
    t = Table(title="ssal report (test split)")
    t.add_column("measure")
    for r in runs:
        t.add_column(r["name"], justify="right")
    t.add_row("fine head (+TR)", *(_pct(r["test"]["fine_accuracy"]) for r in runs))
    t.add_row(
        "joint (+JP)",
        *(_pct(r["test"]["joint_accuracy"]) if r["groupings"] else "-" for r in runs),
    )
    t.add_row(
        "all heads agree: accuracy",
        *(_pct(r["set_aside"]["kept_accuracy"]) if r["groupings"] else "-" for r in runs),
    )
    t.add_row(
        "AURC by confidence",
        *(f"{r['risk_coverage']['confidence']['aurc']:.4f}" for r in runs),
    )
    t.add_row(
        "AURC by disagreement",
        *(
            f"{r['risk_coverage']['disagreement']['aurc']:.4f}"
            if "disagreement" in r["risk_coverage"]
            else "-"
            for r in runs
        ),
    )
    if all("hierarchy" in r for r in runs):
        t.add_row(
            "mean mistake severity",
            *(
                "-"
                if r["hierarchy"]["mean_severity"] is None
                else f"{r['hierarchy']['mean_severity']:.3f}"
                for r in runs
            ),
        )
    _console().print(t)


# ----------------------------------------------------------------------------------- parsers
def add_commands(sub: Any) -> None:
    """Add the ``predict`` and ``report`` subcommands to ``ssal``'s subparsers."""
    p = sub.add_parser("predict", help="structured predictions for image files")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by ssal")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--alpha", type=float, help="combination factor (default: the checkpoint's)")
    p.add_argument("--top-k", type=int, default=1, help="classes listed per head (default 1)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="HTML report with plots for run folders")
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders (ssal demo's folder reports its baseline and SSAL runs), or one "
        "ssal study folder (or its study.json)",
    )
    p.add_argument("--out", help="HTML file to write (default: report.html in the first RUN_DIR)")
    p.add_argument("--json", help="also write the plotted data to this JSON file")
    p.add_argument("--alpha", type=float, help="fixed alpha (default: chosen on held-out split)")
    _data_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)
