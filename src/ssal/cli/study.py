"""``ssal study``: configs x seeds, mean ± std and paired differences with 95% intervals."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ssal.cli.common import UserError, console

__all__ = ["add_parser", "print_study", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="configs x seeds: mean ± std and paired differences")
    p.add_argument("--config", nargs="+", required=True, help="YAML configs (ssal fit)")
    p.add_argument("--name", nargs="+", help="a name per config (default: file stems)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--grid", nargs="+", help="KEY=V1,V2: variants of every config")
    p.add_argument("--baseline", help="config the others are compared with (default: first)")
    p.add_argument("--out", required=True, help="study folder (runs resume from it)")
    p.add_argument("--devices", type=int, default=0, help="GPUs to spread runs over")
    p.add_argument("--parallel", type=int, help="runs at a time (default: one per device)")
    p.add_argument("--max-runs", type=int, help="stop after this many new runs")
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
    print_study(summary, out)
    out.print(f"wrote {Path(args.out) / 'study.json'}")
    stopped = summary.get("stopped")
    if stopped:
        out.print(
            f"stopped by the {stopped['reason']}: {len(stopped['runs_left'])} runs left; run the "
            "same command again (study.json alone in --out is enough) to go on"
        )
    return 0


def print_study(summary: dict, out: Any = None) -> None:
    """The study tables: per config mean ± std, then differences with their 95% intervals.

    Laid out to fit an 80-column terminal; the HTML report (``ssal report``) has every column.
    """
    from rich.table import Table

    from ssal.report.study_page import (
        config_rows,
        convergence_rows,
        difference_rows,
        epochs_text,
        pair_rows,
    )

    out = out or console()
    done = summary.get("finished_runs")
    runs = f"{done} of {summary.get('planned_runs')} runs, " if done is not None else ""
    t = Table(
        title=f"study: {runs}test accuracy, mean ± std over seeds; epochs to the same seed's "
        f"{summary['baseline']} final accuracy (and to 99.5% of it)"
    )
    t.add_column("config", min_width=12)
    for col in ("seeds", "+TR (%)", "+JP (%)", "epochs", "99.5%"):
        t.add_column(col, justify="right", no_wrap=True)
    keys = ("epochs_to_baseline_final", "epochs_to_baseline_final_tolerance")
    rows = config_rows(summary)
    for (name, seeds, tr, jp, *_), c in zip(rows, summary["configs"].values(), strict=True):
        t.add_row(name, seeds, tr, jp, *(epochs_text(c.get(k), per_seed=False) for k in keys))
    out.print(t)
    base = summary["baseline"]
    d = Table(title=f"minus {base}'s +TR, points: {summary['interval']}")
    for col in ("config", "head", "difference [95% CI]", "shows", "seeds"):
        d.add_column(col, justify="left" if col in ("config", "head") else "right")
    for name, tr, tr_shows, jp, jp_shows, n in difference_rows(summary):
        d.add_row(name, "+TR", tr, tr_shows, n)
        if jp != "-":
            d.add_row("", "+JP", jp, jp_shows, n)
    out.print(d)
    rows = convergence_rows(summary)
    if rows:
        c = Table(title=f"epochs to {base}'s final +TR of the same seed, minus {base}'s")
        for col in ("config", "at", "difference [95% CI]", "shows", "never", "seeds"):
            c.add_column(col, justify="left" if col in ("config", "at") else "right")
        for name, exact, exact_shows, tol, tol_shows, never, never_tol, n in rows:
            c.add_row(name, "100%", exact, exact_shows, never, n)
            c.add_row("", "99.5%", tol, tol_shows, never_tol, n)
        out.print(c)
    if len(summary["configs"]) > 2:
        pt = Table(title="all pairs, b - a, points")
        for col in ("a", "b", "+TR(b) - +TR(a)", "+JP(b) - +JP(a)"):
            pt.add_column(col)
        for a, b, tr, jp, _ in pair_rows(summary):
            pt.add_row(a, b, tr, jp)
        out.print(pt)
