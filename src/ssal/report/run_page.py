"""``ssal report RUN_DIR ...``: one self-contained HTML page that shows what trained models
learned.

For each run evaluated by ``ssal.evaluate.evaluate_runs`` (on the held-out split: SSAL runs'
accuracy against alpha, and alpha is chosen there, never on the test set; and on the test
split) the report renders what it is given: training curves from ``metrics.csv``, the
confusion matrix ordered by groups, the groupings as lists of class names, accuracy against
alpha, the paper's set-aside analysis, the pairwise table of heads, risk-coverage curves with
their AURC, hierarchy-aware metrics (coarse accuracy, mistake severity) and, for two runs, the
per-class accuracy change. Runs sit side by side (a baseline next to its SSAL model). Every
plotted number is also embedded as JSON in ``<script type="application/json" id="ssal-data">``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssal import analysis
from ssal.errors import UserError
from ssal.evaluate import RunResult
from ssal.files import write_text
from ssal.grouping import CIFAR100_CLASSES, Grouping, cifar100_superclasses
from ssal.report.figures import (
    plot_alpha,
    plot_class_change,
    plot_confusion,
    plot_risk_coverage,
    plot_training_curves,
)
from ssal.report.pages import fmt_num, fmt_pct, html_page, html_table, img_tag, side_by_side

__all__ = [
    "analyse_run",
    "build_report",
    "hierarchy_levels",
    "save_report",
]

MAX_CURVE_POINTS = 400  # risk-coverage points kept for plots and the embedded data


def hierarchy_levels(results: Sequence[RunResult]) -> list[Grouping]:
    """Groupings treated as the levels of a hierarchy for every run, coarse to fine.

    Those of the first SSAL run, plus CIFAR-100's superclasses when the classes are
    CIFAR-100's; baselines are judged on the same levels so their mistakes compare.
    """
    levels: list[Grouping] = []
    for r in results:
        if r.groupings:
            levels = list(r.groupings)
            break
    if results and results[0].class_names == list(CIFAR100_CLASSES):
        sc = cifar100_superclasses()
        if all(not np.array_equal(sc.assignment, g.assignment) for g in levels):
            levels.append(sc)
    c = results[0].card.num_classes if results else 0
    return sorted((g for g in levels if g.num_classes == c), key=lambda g: g.num_groups)


def analyse_run(result: RunResult, levels: Sequence[Grouping]) -> dict[str, Any]:
    """The paper's analysis and the hierarchy-aware metrics of one evaluated run."""
    o = result.outputs
    groupings = result.groupings
    n_classes = result.card.num_classes
    correct = analysis.head_correctness(o["fine_class"], o["branch_group"], o["labels"], groupings)
    disagree = analysis.disagreements(o["fine_class"], o["branch_group"], groupings)
    by_conf = analysis.risk_coverage_by_confidence(correct[0], o["fine_prob"])
    out: dict[str, Any] = {
        "set_aside": analysis.set_aside_analysis(
            o["fine_class"], o["branch_group"], o["labels"], groupings, o["joint_class"]
        ),
        "pairwise": analysis.pairwise_table(correct, analysis.head_names(groupings))._asdict(),
        "risk_coverage": {"confidence": _curve(by_conf)},
        "per_class_accuracy": analysis.per_class_accuracy(o["fine_class"], o["labels"], n_classes),
        "confusion": analysis.confusion_matrix(o["fine_class"], o["labels"], n_classes),
    }
    if groupings:
        by_dis = analysis.risk_coverage_by_disagreement(
            correct[0], disagree.sum(axis=1), o["fine_prob"]
        )
        out["risk_coverage"]["disagreement"] = _curve(by_dis)
    if levels:
        out["hierarchy"] = analysis.hierarchy_metrics(
            o["fine_class"], o["labels"], levels, [g.name for g in levels]
        )
    return out


def _curve(rc: analysis.RiskCoverage) -> dict[str, Any]:
    """A risk-coverage curve thinned to at most ``MAX_CURVE_POINTS`` (always ending at 1)."""
    cov, risk = rc.coverage, rc.risk
    if len(cov) > MAX_CURVE_POINTS:
        idx = np.searchsorted(cov, np.linspace(0, 1, MAX_CURVE_POINTS), side="left")
        idx = np.unique(np.clip(idx, 0, len(cov) - 1))
        cov, risk = cov[idx], risk[idx]
    return {"coverage": cov, "risk": risk, "aurc": rc.aurc}


def _summary_rows(
    results: Sequence[RunResult], analyses: Sequence[Mapping[str, Any]]
) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(label: str, values: Iterable[str]) -> None:
        rows.append([label, *values])

    add("model", (r.card.model for r in results))
    add("epochs trained", (str((r.card.epoch or 0) + 1) for r in results))
    add("test images", (str(r.test["num_samples"]) for r in results))
    add("fine head (+TR)", (fmt_pct(r.test["fine_accuracy"]) for r in results))
    add(
        "joint (+JP)",
        (fmt_pct(r.test["joint_accuracy"]) if r.groupings else "-" for r in results),
    )
    add(
        "alpha used (chosen on)",
        (f"{r.alpha:g} ({r.alpha_source})" if r.groupings else "-" for r in results),
    )
    most = max((len(r.groupings) for r in results), default=0)
    for i in range(most):
        add(
            f"branch {i + 1} (coarse accuracy)",
            (
                fmt_pct(r.test["branch_accuracy"][i]) if i < len(r.groupings) else "-"
                for r in results
            ),
        )
    add(
        "all heads agree: share",
        (
            fmt_pct(a["set_aside"]["kept_fraction"]) if r.groupings else "-"
            for r, a in zip(results, analyses, strict=True)
        ),
    )
    add(
        "all heads agree: accuracy",
        (
            fmt_pct(a["set_aside"]["kept_accuracy"]) if r.groupings else "-"
            for r, a in zip(results, analyses, strict=True)
        ),
    )
    add(
        "AURC, abstain by confidence",
        (fmt_num(a["risk_coverage"]["confidence"]["aurc"]) for a in analyses),
    )
    add(
        "AURC, abstain by disagreement",
        (
            fmt_num(a["risk_coverage"]["disagreement"]["aurc"])
            if "disagreement" in a["risk_coverage"]
            else "-"
            for a in analyses
        ),
    )
    return rows


def _set_aside_table(r: RunResult, a: Mapping[str, Any]) -> str:
    s = a["set_aside"]
    rows = [
        ["all images: fine head right", fmt_pct(s["fine_accuracy"]), str(s["num_samples"])],
        [
            "kept (every branch agrees): fine head right",
            fmt_pct(s["kept_accuracy"]),
            str(s["kept"]),
        ],
        ["share kept", fmt_pct(s["kept_fraction"]), ""],
        ["set aside: fine head right", fmt_pct(s["set_aside_fine_accuracy"]), str(s["set_aside"])],
        ["set aside: +JP right", fmt_pct(s.get("set_aside_joint_accuracy")), ""],
    ]
    for i, v in enumerate(s["set_aside_branch_accuracy"]):
        rows.append([f"set aside: branch {i + 1} right (its groups)", fmt_pct(v), ""])
    return html_table(["", "accuracy", "images"], rows)


def _pairwise_tables(a: Mapping[str, Any]) -> str:
    p = a["pairwise"]
    heads = p["heads"]
    out = []
    for key, cond, counts in (
        ("given_right", "right", p["num_right"]),
        ("given_wrong", "wrong", p["num_wrong"]),
    ):
        rows = [
            [f"{h} {cond} ({int(counts[i])})", *(fmt_pct(v) for v in p[key][i])]
            for i, h in enumerate(heads)
        ]
        out.append(html_table([f"if ... is {cond}: how often is ... right", *heads], rows))
    return "".join(out)


def _hierarchy_table(r: RunResult, a: Mapping[str, Any]) -> str:
    h = a.get("hierarchy")
    if not h:
        return '<p class="note">no hierarchy for these classes.</p>'
    rows = [
        [
            f"coarse accuracy at {lv['name']} ({lv['num_groups']} groups)",
            fmt_pct(lv["coarse_accuracy"]),
        ]
        for lv in h["levels"]
    ]
    rows.append(["mistakes", str(h["num_mistakes"])])
    rows.append(["mean mistake severity (levels crossed)", fmt_num(h["mean_severity"], 3)])
    for s, count in enumerate(h["severity_histogram"]):
        share = count / h["num_mistakes"] if h["num_mistakes"] else float("nan")
        rows.append([f"mistakes crossing {s} of {len(h['levels'])} levels", fmt_pct(share)])
    return html_table(["", r.source.name], rows)


def _groupings_html(results: Sequence[RunResult], levels: Sequence[Grouping]) -> str:
    seen: list[np.ndarray] = []
    parts = []
    for r in list(results) + [None]:
        groupings = r.groupings if r is not None else list(levels)
        names = (r or results[0]).class_names
        for i, g in enumerate(groupings):
            if any(np.array_equal(g.assignment, s) for s in seen):
                continue
            seen.append(g.assignment)
            title = f"{g.name} ({g.num_groups} groups, mode {g.mode})"
            if r is not None:
                title = f"{r.source.name}, branch {i + 1}: {title}"
            items = "".join(
                "<li>" + html.escape(", ".join(names[c] for c in g.members(k))) + "</li>"
                for k in range(g.num_groups)
            )
            parts.append(f"<h3>{html.escape(title)}</h3><ol class='groups' start='0'>{items}</ol>")
    return "".join(parts) or '<p class="note">no groupings (baseline runs only).</p>'


def _run_entry(r: RunResult, a: Mapping[str, Any], curves: Mapping[str, Any]) -> dict[str, Any]:
    """The embedded data of one run."""
    drop = lambda d: {k: v for k, v in d.items() if k != "confusion"}  # noqa: E731
    return {
        "name": r.source.name,
        "checkpoint": r.source.checkpoint,
        "metrics_csv": r.source.metrics_csv,
        "model": r.card.model,
        "epoch": r.card.epoch,
        "alpha": r.alpha,
        "alpha_source": r.alpha_source,
        "groupings": r.groupings,
        "test": drop(r.test),
        "heldout": drop(r.heldout) if r.heldout else None,
        "training_curves": curves,
        "warnings": r.warnings,
        **a,
    }


def _alpha_series(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """What the alpha plot draws, per run."""
    out = []
    for r in results:
        if not r.groupings:
            out.append({"name": r.source.name, "baseline_accuracy": r.test["fine_accuracy"]})
            continue
        held = (r.heldout or {}).get("joint_accuracy_by_alpha")
        out.append(
            {
                "name": r.source.name,
                "alpha": r.alpha,
                "alpha_source": r.alpha_source,
                "heldout": held,
                "test": r.test.get("joint_accuracy_by_alpha"),
            }
        )
    return out


ALPHA_CAPTION = (
    "+JP accuracy as a function of the combination factor alpha on the held-out split "
    "(dashed) and the test split (solid); alpha is chosen on the held-out split, where the "
    "dashed curve peaks. Baselines (no branches) are dotted lines."
)


def _analysis_sections(
    results: Sequence[RunResult], analyses: Sequence[Mapping[str, Any]], levels: Sequence[Grouping]
) -> list[str]:
    """The per-run tables: set-aside analysis, pairwise table, hierarchy-aware metrics."""
    names = [r.source.name for r in results]
    runs = list(zip(results, analyses, strict=True))
    no_branches = "<p class='note'>no branches: one head, nothing to compare.</p>"
    return [
        side_by_side(
            "Set-aside analysis (the paper's)",
            names,
            (_set_aside_table(r, a) if r.groupings else no_branches for r, a in runs),
        )
        + '<p class="note">Predictions where some branch disagrees with the fine head (the '
        "branch's group is not the group of the fine class) are set aside as doubtful.</p>",
        side_by_side(
            "Pairwise table of heads",
            names,
            (_pairwise_tables(a) if r.groupings else no_branches for r, a in runs),
        )
        + '<p class="note">Row: the condition (head i right, or wrong, with its count); column: '
        "how often head j is right then. The fine head is right when its class is the label, "
        "branch i when its group is the label's group.</p>",
        side_by_side("Hierarchy-aware metrics", names, (_hierarchy_table(r, a) for r, a in runs))
        + '<p class="note">Levels: '
        + html.escape(", ".join(g.name for g in levels) or "none")
        + ". Coarse accuracy: the fine head's class falls into the label's group. Mistake "
        "severity: for each wrong answer, the number of levels at which answer and label lie in "
        "different groups (0: a near miss inside the label's group at every level), averaged "
        "over the mistakes; baselines are judged on the same levels.</p>",
    ]


def _class_change_section(
    results: Sequence[RunResult], analyses: Sequence[Mapping[str, Any]], order: np.ndarray
) -> tuple[str, dict[str, Any]]:
    """The per-class accuracy change from the baseline (or the first run) to the SSAL run."""
    before = next((r for r in results if not r.groupings), results[0])
    after = next((r for r in results if r is not before and r.groupings), None)
    after = after or next(r for r in results if r is not before)
    ia, ib = results.index(before), results.index(after)
    delta = np.asarray(analyses[ib]["per_class_accuracy"]) - analyses[ia]["per_class_accuracy"]
    names = [after.class_names[i] for i in order]
    png, plotted = plot_class_change(before.source.name, after.source.name, delta[order], names)
    plotted["order"] = order
    return "<h2>Per-class accuracy change</h2>" + img_tag(png, "per-class change"), plotted


def build_report(
    results: Sequence[RunResult], title: str = "ssal report"
) -> tuple[str, dict[str, Any]]:
    """The HTML page for evaluated runs, and the data it plots (also embedded in the page)."""
    if not results:
        raise UserError("no runs to report")
    if len({r.card.num_classes for r in results}) > 1:
        raise UserError("the runs have different numbers of classes; report them separately")
    levels = hierarchy_levels(results)
    analyses = [analyse_run(r, levels) for r in results]
    order = analysis.group_order(levels, results[0].card.num_classes)
    names = [r.source.name for r in results]
    data: dict[str, Any] = {"title": title, "class_order": order, "runs": []}
    sections = [
        "<h2>Summary (test split)</h2>"
        + html_table(["", *names], _summary_rows(results, analyses))
        + '<p class="note">+TR: the fine head of a model trained with SSAL branches; +JP: the '
        "joint prediction of all heads, with alpha chosen on the held-out split. AURC: area "
        "under the risk-coverage curve (lower is better).</p>"
        + "".join(
            f"<p class='note'>Warning: {html.escape(w)}</p>" for r in results for w in r.warnings
        )
    ]
    curves_html = []
    for r, a in zip(results, analyses, strict=True):
        png, plotted = plot_training_curves(r.log, f"{r.source.name}: training curves")
        curves_html.append(img_tag(png, "training curves"))
        data["runs"].append(_run_entry(r, a, plotted))
    sections.append(side_by_side("Training curves", names, curves_html))
    series = _alpha_series(results)
    png, data["accuracy_by_alpha"] = plot_alpha(series)
    with_branches = any("alpha" in s for s in series)
    sections.append(
        "<h2>Accuracy against alpha</h2>"
        + img_tag(png, "accuracy against alpha" + ("" if with_branches else " (no SSAL run)"))
        + f'<p class="note">{ALPHA_CAPTION}</p>'
    )
    png, _ = plot_risk_coverage(
        {r.source.name: a["risk_coverage"] for r, a in zip(results, analyses, strict=True)}
    )
    sections.append(
        "<h2>Risk against coverage</h2>"
        + img_tag(png, "risk-coverage")
        + '<p class="note">Abstaining on the least trusted images first: by the fine head\'s '
        "confidence (max softmax, solid), or by disagreement (dashed: images where more "
        "branches disagree with the fine head go first, ties by confidence). Risk is the fine "
        "head's error rate on the images kept.</p>"
    )
    sections += _analysis_sections(results, analyses, levels)
    if len(results) >= 2:
        section, data["class_change"] = _class_change_section(results, analyses, order)
        sections.append(section)
    sections.append(_confusion_section(results, analyses, order, levels))
    sections.append("<h2>Groupings</h2>" + _groupings_html(results, levels))
    run_list = "".join(
        f"<li><b>{html.escape(r.source.name)}</b>: {html.escape(r.card.model)}, "
        f"checkpoint <code>{html.escape(str(r.source.checkpoint))}</code></li>"
        for r in results
    )
    return html_page(title, f"<ul>{run_list}</ul>", sections, data)


def _confusion_section(
    results: Sequence[RunResult],
    analyses: Sequence[Mapping[str, Any]],
    order: np.ndarray,
    levels: Sequence[Grouping],
) -> str:
    """Each run's test confusion matrix, classes ordered by groups, boundaries drawn."""
    boundaries = list(levels[:2])
    pngs = (
        plot_confusion(
            a["confusion"], order, r.class_names, boundaries, f"{r.source.name}: fine head"
        )[0]
        for r, a in zip(results, analyses, strict=True)
    )
    return side_by_side(
        "Confusion matrices (test split, classes ordered by groups)",
        [r.source.name for r in results],
        (img_tag(png, "confusion matrix") for png in pngs),
    ) + "".join(
        f'<p class="note">{kind} lines: the groups of {html.escape(g.name)}.</p>'
        for kind, g in zip(("Solid red", "Dashed orange"), boundaries, strict=False)
    )


def save_report(results: Sequence[RunResult], target: str | Path) -> tuple[Path, dict[str, Any]]:
    """Write the report of evaluated runs to ``target``; returns its path and the plotted
    data."""
    title = "ssal report: " + " vs ".join(r.source.name for r in results)
    page, data = build_report(results, title)
    return write_text(Path(target), page), data
