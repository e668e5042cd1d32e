"""``ssal report``: one self-contained HTML page for run folders, or for a study."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ssal.cli.common import add_data_args, card_data, device, pct, say, show_table, track, warn
from ssal.errors import UserError
from ssal.files import write_json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="HTML report with plots for run folders or a study",
        description="One self-contained HTML page: for run folders, evaluated on the held-out "
        "and test splits; for a study, from its study.json.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders (ssal demo's folder reports its baseline and SSAL runs), or one "
        "ssal study folder (or its study.json)",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="HTML file to write (default: report.html in the first RUN_DIR)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the plotted data to this JSON file")
    p.add_argument("--alpha", type=float, help="fixed alpha (default: chosen on held-out split)")
    add_data_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate run folders (or read a study) and write one HTML report; print the numbers."""
    from ssal.evaluate import evaluate_runs
    from ssal.report import find_study, save_report

    if any(find_study(p) for p in args.runs):
        return _study(args)
    results = evaluate_runs(
        args.runs,
        card_data(args),
        device=device(args.device),
        alpha=args.alpha,
        track=track(not args.quiet),
    )
    first = Path(args.runs[0])
    default = (first if first.is_dir() else first.parent) / "report.html"
    path, data = save_report(results, Path(args.out) if args.out else default)
    if args.json:
        write_json(args.json, data)
    for r in data["runs"]:
        for w in r.get("warnings") or []:
            warn(w)
    _print(data)
    say(f"wrote {path}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from ssal.cli.study import print_study
    from ssal.report import write_study_report

    if len(args.runs) > 1:
        raise UserError("give one study folder (or study.json), or run folders without a study")
    path, data, summary = write_study_report(args.runs[0], args.out)
    if args.json:
        write_json(args.json, data)
    print_study(summary)
    say(f"wrote {path}")
    return 0


def _print(data: dict[str, Any]) -> None:
    runs = data["runs"]
    has = lambda r: bool(r["groupings"])  # noqa: E731
    aurc = lambda r, how: (  # noqa: E731
        f"{r['risk_coverage'][how]['aurc']:.4f}" if how in r["risk_coverage"] else "-"
    )
    rows = [
        ["fine head (+TR)", *(pct(r["test"]["fine_accuracy"]) for r in runs)],
        ["joint (+JP)", *(pct(r["test"]["joint_accuracy"]) if has(r) else "-" for r in runs)],
        [
            "all heads agree: accuracy",
            *(pct(r["set_aside"]["kept_accuracy"]) if has(r) else "-" for r in runs),
        ],
        ["AURC by confidence", *(aurc(r, "confidence") for r in runs)],
        ["AURC by disagreement", *(aurc(r, "disagreement") for r in runs)],
    ]
    if all("hierarchy" in r for r in runs):
        sev = lambda h: "-" if h["mean_severity"] is None else f"{h['mean_severity']:.3f}"  # noqa: E731
        rows.append(["mean mistake severity", *(sev(r["hierarchy"]) for r in runs)])
    names = [r["name"] for r in runs]
    show_table("ssal report (test split)", ["measure", *names], rows, right=names)
