"""``ssal study``: configs x seeds, mean ± std and paired differences with 95% intervals."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssal.cli.common import console, show_table
from ssal.errors import UserError

__all__ = ["add_parser", "print_study", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="configs x seeds: mean ± std and paired differences",
        description="Train and evaluate every config at every seed (resuming where a study "
        "stopped); print per config mean ± std and paired differences with 95% intervals.",
    )
    p.add_argument(
        "--config", nargs="+", required=True, metavar="FILE", help="YAML configs (ssal fit)"
    )
    p.add_argument("--name", nargs="+", help="a name per config (default: the file names)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S", help="seeds")
    p.add_argument("--grid", nargs="+", metavar="KEY=V1,V2", help="variants of every config")
    p.add_argument("--baseline", help="config the others are compared with (default: the first)")
    p.add_argument("--out", required=True, metavar="DIR", help="study folder (runs resume from it)")
    p.add_argument("--devices", type=int, default=0, metavar="N", help="GPUs to spread runs over")
    p.add_argument(
        "--parallel", type=int, metavar="N", help="runs at a time (default: one per device)"
    )
    p.add_argument("--max-runs", type=int, metavar="N", help="stop after this many new runs")
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="stop cleanly between runs when this time is spent: no run starts that is "
        "expected to end later, one still going then is stopped and left for next time; "
        "study.json, alone in a fresh --out, resumes the study (default: no limit)",
    )
    p.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="after --: options passed to every `ssal fit`"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssal.study import plan_runs, run_study

    overrides = [a for a in (args.overrides or []) if a != "--"]
    runs = plan_runs(args.config, args.seeds, args.name, args.grid or [], overrides)
    out = console()
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise UserError(f"--budget-minutes must be positive, got {args.budget_minutes:g}")
    summary = run_study(
        runs,
        args.out,
        args.devices,
        args.baseline,
        args.max_runs,
        args.parallel,
        log=out.print,
        budget_minutes=args.budget_minutes,
    )
    print_study(summary)
    out.print(f"wrote {Path(args.out) / 'study.json'}")
    stopped = summary.get("stopped")
    if stopped:
        out.print(
            f"stopped by the {stopped['reason']}: {len(stopped['runs_left'])} runs left; run the "
            "same command again (study.json alone in --out is enough) to go on"
        )
    return 0


def print_study(summary: dict) -> None:
    """The study tables: per config mean ± std, then differences with their 95% intervals.

    Laid out to fit an 80-column terminal; the HTML report (``ssal report``) has every column.
    """
    from ssal.report.study_page import (
        config_rows,
        convergence_rows,
        difference_rows,
        epochs_text,
        pair_rows,
    )

    done = summary.get("finished_runs")
    runs = f"{done} of {summary.get('planned_runs')} runs, " if done is not None else ""
    keys = ("epochs_to_baseline_final", "epochs_to_baseline_final_tolerance")
    rows = [
        [name, seeds, tr, jp, *(epochs_text(c.get(k), per_seed=False) for k in keys)]
        for (name, seeds, tr, jp, *_), c in zip(
            config_rows(summary), summary["configs"].values(), strict=True
        )
    ]
    cols = ("config", "seeds", "+TR (%)", "+JP (%)", "epochs", "99.5%")
    title = (
        f"study: {runs}test accuracy, mean ± std over seeds; epochs to the same seed's "
        f"{summary['baseline']} final accuracy (and to 99.5% of it)"
    )
    show_table(title, cols, rows, right=cols[1:])
    base = summary["baseline"]
    rows = []
    for name, tr, tr_shows, jp, jp_shows, n in difference_rows(summary):
        rows.append([name, "+TR", tr, tr_shows, n])
        if jp != "-":
            rows.append(["", "+JP", jp, jp_shows, n])
    cols = ("config", "head", "difference [95% CI]", "shows", "seeds")
    title = f"minus {base}'s +TR, points: {summary['interval']}"
    show_table(title, cols, rows, right=cols[2:])
    rows = []
    for name, exact, exact_shows, tol, tol_shows, never, never_tol, n in convergence_rows(summary):
        rows += [
            [name, "100%", exact, exact_shows, never, n],
            ["", "99.5%", tol, tol_shows, never_tol, n],
        ]
    if rows:
        cols = ("config", "at", "difference [95% CI]", "shows", "never", "seeds")
        title = f"epochs to {base}'s final +TR of the same seed, minus {base}'s"
        show_table(title, cols, rows, right=cols[2:])
    if len(summary["configs"]) > 2:
        rows = [[a, b, tr, jp] for a, b, tr, jp, _ in pair_rows(summary)]
        cols = ("a", "b", "+TR(b) - +TR(a)", "+JP(b) - +JP(a)")
        show_table("all pairs, b - a, points", cols, rows)
