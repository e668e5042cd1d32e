"""``ssal report STUDY_DIR``: a study's ``study.json`` as one self-contained HTML page.

The page shows, per config, +TR and +JP accuracy as mean ± std over seeds with every seed's
value, the paired difference of each config from the baseline with its 95% interval (a forest
plot: an interval that excludes zero is a gain or a loss the seeds can tell apart), the test
accuracy per epoch (mean ± std band, with the baseline's final accuracy as the bar to reach),
and the epochs each config needs to reach it. Nothing is re-evaluated: ``study.json`` already
holds every number, so the report takes a second. As in the run report, every plotted
number is embedded as JSON in ``<script type="application/json" id="ssal-data">``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssal.errors import UserError
from ssal.files import write_text
from ssal.report.figures import plot_convergence, plot_differences, plot_study_accuracy
from ssal.report.pages import html_page, html_table, img_tag

__all__ = [
    "build_study_report",
    "config_rows",
    "convergence_points",
    "convergence_rows",
    "difference_points",
    "difference_rows",
    "epochs_text",
    "epochs_verdict",
    "find_study",
    "pair_rows",
    "read_study",
    "verdict",
    "write_study_report",
]

STUDY_FILE = "study.json"
_REQUIRED = ("baseline", "configs", "vs_baseline", "pairs", "interval")


def find_study(path: str | Path) -> Path | None:
    """``study.json`` for a study folder or the file itself; None when ``path`` is no study.

    A folder laid out as a study (``<config>/seed<S>/``) whose ``study.json`` is not written
    yet is refused with a clear message.
    """
    p = Path(path)
    if p.is_dir() and (p / STUDY_FILE).is_file():
        return p / STUDY_FILE
    if p.is_file() and p.suffix == ".json":
        return p
    if p.is_dir() and any(p.glob("*/seed*/log.txt")):
        raise FileNotFoundError(
            f"{p} holds a study without {STUDY_FILE} yet: it is written when a run finishes; "
            "wait for the first one (if the study was stopped, run the same ssal study command "
            "again to resume it)"
        )
    return None


def read_study(path: str | Path) -> dict[str, Any]:
    """Read and check a ``study.json`` written by ``ssal study``."""
    file = find_study(path)
    if file is None:
        raise FileNotFoundError(f"no {STUDY_FILE} in {path}")
    try:
        summary = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: not a readable study.json ({exc})") from None
    if not isinstance(summary, dict) or "configs" not in summary:
        raise UserError(f"{file}: not a study.json written by ssal study")
    missing = [k for k in _REQUIRED if k not in summary]
    if missing:
        raise UserError(
            f"{file}: written by an older ssal (no {', '.join(missing)}); run the same ssal study "
            "command again to rewrite it (finished runs are not redone)"
        )
    if not any(c.get("seeds") for c in summary["configs"].values()):
        raise UserError(f"{file}: the study has no finished runs yet")
    return summary


def difference_points(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per config and head, the paired difference from the baseline in points with its 95%
    interval: the rows of the forest plot."""
    rows = []
    for name, d in summary["vs_baseline"].items():
        for key, label in (("fine_difference", "+TR"), ("joint_difference", "+JP")):
            if key == "joint_difference" and not summary["configs"][name].get("has_branches"):
                continue
            x = d[key]
            if not x["n"]:
                continue
            lo, hi = x["ci95"]
            rows.append(
                {
                    "config": name,
                    "head": label,
                    "mean": 100 * x["mean"],
                    "ci95": None if lo is None else [100 * lo, 100 * hi],
                    "n": x["n"],
                }
            )
    return rows


# ------------------------------------------------------------------------------------ html
def _finite(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _ms(m: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 2) -> str:
    if not m or not m.get("n") or m.get("mean") is None or math.isnan(_finite(m["mean"])):
        return "-"
    mean = f"{scale * m['mean']:.{digits}f}"
    std = _finite(m.get("std"))
    return mean if m["n"] < 2 or math.isnan(std) else f"{mean} ± {scale * std:.{digits}f}"


def _diff(x: Mapping[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    """A paired difference with its 95% interval: points (fractions times 100) or epochs."""
    if not x["n"]:
        return "-"
    lo, hi = x["ci95"]
    mean = f"{scale * x['mean']:+.{digits}f}"
    if lo is None:
        return f"{mean} (one seed)"
    return f"{mean} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def verdict(x: Mapping[str, Any]) -> str:
    """What a paired difference shows: a gain, a loss, or nothing the seeds can tell apart."""
    lo, hi = x.get("ci95", [None, None])
    if not x.get("n"):
        return "no paired seeds"
    if lo is None:
        return "needs 2+ seeds"
    if lo > 0:
        return "gain"
    if hi < 0:
        return "loss"
    return "no difference"


def epochs_text(reach: Mapping[str, Any] | None, per_seed: bool = True) -> str:
    """Epochs to reach the target: mean ± std over seeds, then (``per_seed``) each seed's."""
    if not reach or "counted" not in reach or not reach.get("n"):
        return "-"  # also a study.json from before per-seed convergence
    if not per_seed:
        return _ms(reach, scale=1.0, digits=1)
    seeds = "/".join("never" if r is None else str(r) for r in reach["per_seed"])
    return f"{_ms(reach, scale=1.0, digits=1)} ({seeds})"


def config_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Per config: seeds, +TR, +JP, alpha per seed, epochs to the baseline's final accuracy of
    the same seed (and to 99.5% of it), seconds per run."""
    rows = []
    for name, c in summary["configs"].items():
        rows.append(
            [
                name,
                str(len(c["seeds"])),
                _ms(c["fine_accuracy"]),
                _ms(c["joint_accuracy"]) if c.get("has_branches") else "-",
                ", ".join(f"{a:g}" for a in c["alpha"]) if c.get("has_branches") else "-",
                epochs_text(c.get("epochs_to_baseline_final")),
                epochs_text(c.get("epochs_to_baseline_final_tolerance")),
                _ms(c.get("seconds"), scale=1.0, digits=0),
            ]
        )
    return rows


def epochs_verdict(x: Mapping[str, Any]) -> str:
    """What a paired difference in epochs shows: fewer epochs are faster."""
    shows = verdict(x)
    return {"gain": "slower", "loss": "faster"}.get(shows, shows)


_REACH = ("epochs_to_baseline_final", "epochs_to_baseline_final_tolerance")


def convergence_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Per config: epochs to the same seed's baseline final accuracy (and to 99.5% of it)
    minus the baseline's, with 95% intervals; how many seeds never reached it."""
    rows = []
    for name, d in summary["vs_baseline"].items():
        if f"{_REACH[0]}_difference" not in d:
            continue  # a study.json from before per-seed convergence
        exact, tol = (d[f"{key}_difference"] for key in _REACH)
        never = [str(summary["configs"][name][key]["never_reached"]) for key in _REACH]
        rows.append(
            [
                name,
                _diff(exact, scale=1.0, digits=1),
                epochs_verdict(exact),
                _diff(tol, scale=1.0, digits=1),
                epochs_verdict(tol),
                *never,
                str(exact["n"]),
            ]
        )
    return rows


def convergence_points(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Forest-plot rows: per config and level, the paired difference in epochs from the
    baseline with its 95% interval."""
    rows = []
    for name, d in summary["vs_baseline"].items():
        for key, label in zip(_REACH, ("100%", "99.5%"), strict=True):
            x = d.get(f"{key}_difference")
            if not x or not x["n"]:
                continue
            rows.append(
                {"config": name, "head": label, "mean": x["mean"], "ci95": x["ci95"], "n": x["n"]}
            )
            if rows[-1]["ci95"][0] is None:
                rows[-1]["ci95"] = None
    return rows


def difference_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Per config: paired difference from the baseline with its interval and what it shows."""
    rows = []
    for name, d in summary["vs_baseline"].items():
        has = summary["configs"][name].get("has_branches")
        fine, joint = d["fine_difference"], d["joint_difference"]
        rows.append(
            [
                name,
                _diff(fine),
                verdict(fine),
                _diff(joint) if has else "-",
                verdict(joint) if has else "-",
                str(fine["n"]),
            ]
        )
    return rows


def pair_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Every pair of configs: differences of +TR, of +JP, and +JP of b over +TR of a."""
    keys = ("fine_difference", "joint_difference", "joint_vs_a_fine")
    return [[p["a"], p["b"], *(_diff(p[k]) for k in keys)] for p in summary["pairs"]]


def build_study_report(summary: Mapping[str, Any], title: str) -> tuple[str, dict[str, Any]]:
    """The HTML page for a study summary, and the data it plots (also embedded in the page)."""
    e = html.escape
    base = summary["baseline"]
    data: dict[str, Any] = {"title": title, "kind": "study", "summary": summary}
    header = ["config", "seeds", "+TR (%)", "+JP (%)", "alpha per seed"]
    header += [f"epochs to {base}'s final", "to 99.5% of it", "seconds per run"]
    sections = [
        "<h2>Configs (test split)</h2>"
        + html_table(header, config_rows(summary))
        + '<p class="note">Mean ± std over seeds (sample std). +TR: the fine head; +JP: the '
        "joint prediction of all heads with alpha tuned on the held-out split of each run. "
        f"Epochs to {e(base)}'s final: per seed, the first epoch whose test accuracy reaches "
        f"the final test accuracy of {e(base)} with the same seed (and 99.5% of it); mean ± "
        "std over seeds, then each seed's value. A seed that never reaches it counts as its "
        "number of epochs + 1 in the mean (a lower bound).</p>"
    ]
    points = difference_points(summary)
    data["differences"] = {"baseline": base, "rows": points}
    png = plot_differences(points, base)
    header = ["config", "+TR - base (pts)", "+TR shows", "+JP - base (pts)", "+JP shows"]
    sections.append(
        f"<h2>Difference from {e(base)}</h2>"
        + html_table([*header, "paired seeds"], difference_rows(summary))
        + img_tag(png, "paired differences")
        + f'<p class="note">{e(summary["interval"])}; the same seed of two configs forms a '
        f"pair, and both heads are compared with {e(base)}'s +TR. A gain or a loss is shown "
        "only where the interval excludes zero.</p>"
    )
    png, data["accuracy"] = plot_study_accuracy(summary)
    sections.append("<h2>Accuracy over seeds</h2>" + img_tag(png, "accuracy per config"))
    png, data["convergence"] = plot_convergence(summary)
    sections.append("<h2>Convergence</h2>" + img_tag(png, "test accuracy per epoch"))
    points = convergence_points(summary)
    data["convergence_differences"] = {"baseline": base, "rows": points}
    if points:
        png = plot_differences(points, base, f"epochs minus {base}'s, same seed (fewer: faster)")
        header = ["config", "to 100%: epochs - base", "shows", "to 99.5%", "shows"]
        sections.append(
            f"<h2>Epochs to {e(base)}'s final accuracy, seed by seed</h2>"
            + html_table(
                [*header, "never (100%)", "never (99.5%)", "paired seeds"],
                convergence_rows(summary),
            )
            + img_tag(png, "paired differences in epochs")
            + '<p class="note">Each seed of a config is paired with the same seed of '
            f"{e(base)}, whose own final accuracy is the target; the difference in epochs has a "
            "95% paired t-interval. Seeds that never reach the target count as epochs + 1, so "
            "a config that often never reaches it looks faster than it is.</p>"
        )
    header = ["a", "b", "+TR(b) - +TR(a)", "+JP(b) - +JP(a)", "+JP(b) - +TR(a)"]
    sections.append("<h2>All pairs (b - a, points)</h2>" + html_table(header, pair_rows(summary)))
    finished, planned = summary.get("finished_runs"), summary.get("planned_runs")
    runs = f"<p class='note'>{finished} of {planned} runs finished.</p>" if finished else ""
    return html_page(title, runs, sections, data)


def write_study_report(
    path: str | Path, out: str | Path | None = None
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Write the report of the study at ``path`` (default ``report.html`` beside study.json).

    Returns the page's path, the plotted data and the study summary.
    """
    summary = read_study(path)
    file = find_study(path)
    assert file is not None
    target = Path(out) if out else file.parent / "report.html"
    page, data = build_study_report(summary, f"ssal study report: {file.parent.resolve().name}")
    return write_text(target, page), data, summary
