"""``ssal report``: one self-contained HTML page that shows what trained models learned.

For each run folder (``ssal demo`` or ``ssal fit`` output) the report evaluates the checkpoint
on the held-out split (SSAL runs: accuracy against alpha, and alpha is chosen there, never on
the test set) and on the test split, then shows: training curves from ``metrics.csv``, the
confusion matrix ordered by groups, the groupings as lists of class names, accuracy against
alpha, the paper's set-aside analysis, the pairwise table of heads, risk-coverage curves with
their AURC, hierarchy-aware metrics (coarse accuracy, mistake severity) and, for two runs, the
per-class accuracy change. Runs sit side by side (a baseline next to its SSAL model).

Plots are PNGs drawn with matplotlib's Agg canvas and embedded as base64 data URIs; every
plotted number is also embedded as JSON in ``<script type="application/json" id="ssal-data">``
so the page can be checked (and re-plotted) without reading pixels.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssal import analysis
from ssal.files import write_text
from ssal.grouping import CIFAR100_CLASSES, Grouping, cifar100_superclasses
from ssal.pages import figure, html_page, html_table, img_tag, png_bytes

__all__ = [
    "RunResult",
    "RunSource",
    "analyse_run",
    "build_report",
    "collect_outputs",
    "evaluate_run",
    "find_runs",
    "hierarchy_levels",
    "plot_alpha",
    "plot_class_change",
    "plot_confusion",
    "plot_risk_coverage",
    "plot_training_curves",
    "read_metrics_csv",
    "write_report",
]

MAX_CURVE_POINTS = 400  # risk-coverage points kept for plots and the embedded data


# --------------------------------------------------------------------------- run folders
@dataclass(frozen=True)
class RunSource:
    """Where a run's checkpoint and training log live."""

    name: str
    directory: Path
    checkpoint: Path
    metrics_csv: Path | None


def _checkpoint_in(directory: Path) -> Path | None:
    for candidate in ("model.ckpt", "checkpoints/last.ckpt"):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _metrics_in(directory: Path) -> Path | None:
    for candidate in ("logs/metrics.csv", "metrics.csv"):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def find_runs(paths: Sequence[str | Path]) -> list[RunSource]:
    """Resolve run folders (or checkpoint files) to checkpoints and ``metrics.csv`` files.

    A run folder holds ``model.ckpt`` (``ssal demo``) or ``checkpoints/last.ckpt``
    (``ssal fit``); a folder holding no checkpoint but run sub-folders (``ssal demo``'s
    ``baseline/`` and ``ssal/``) stands for all of them, baselines first.
    """
    if not paths:
        raise ValueError("no run folders given")
    found: list[RunSource] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            directory = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            found.append(
                RunSource(directory.resolve().name, directory, path, _metrics_in(directory))
            )
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"run folder not found: {path}")
        ckpt = _checkpoint_in(path)
        if ckpt is not None:
            found.append(RunSource(path.resolve().name, path, ckpt, _metrics_in(path)))
            continue
        subs = sorted(
            (d for d in path.iterdir() if d.is_dir() and _checkpoint_in(d) is not None),
            key=lambda d: (d.name != "baseline", d.name),
        )
        if not subs:
            raise FileNotFoundError(
                f"{path}: no checkpoint found; expected model.ckpt or checkpoints/last.ckpt "
                "there or in its sub-folders (e.g. baseline/ and ssal/ of ssal demo)"
            )
        for d in subs:
            found.append(RunSource(d.name, d, _checkpoint_in(d), _metrics_in(d)))  # type: ignore[arg-type]
    names = [r.name for r in found]
    return [
        replace(r, name=f"{r.directory.resolve().parent.name}/{r.name}")
        if names.count(r.name) > 1
        else r
        for r in found
    ]


# ------------------------------------------------------------------------ training log
def read_metrics_csv(path: str | Path) -> dict[str, dict[str, list[float]]]:
    """Series of a Lightning ``metrics.csv``: ``{column: {"epoch", "step", "value"}}``.

    Train and validation values sit on separate rows; each series keeps only the rows where
    its column has a value, in file order.
    """
    path = Path(path)
    series: dict[str, dict[str, list[float]]] = {}
    try:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                epoch, step = _number(row.get("epoch")), _number(row.get("step"))
                for key, raw in row.items():
                    if key in ("epoch", "step") or key is None:
                        continue
                    value = _number(raw)
                    if value is None:
                        continue
                    s = series.setdefault(key, {"epoch": [], "step": [], "value": []})
                    s["epoch"].append(math.nan if epoch is None else epoch)
                    s["step"].append(math.nan if step is None else step)
                    s["value"].append(value)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the training log ({e})") from None
    return series


def _number(raw: Any) -> float | None:
    if raw is None or str(raw).strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        return None


# --------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def collect_outputs(
    model: torch.nn.Module,
    loader: Iterable,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    alpha: float,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "evaluating",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One pass over ``loader``: ``evaluate_model``'s figures and per-sample predictions.

    Per sample (no logits kept): ``fine_class``, ``fine_prob``, ``branch_group (N, B)``,
    ``joint_class`` (at ``alpha``) and ``labels``.
    """
    from ssal.evaluate import evaluate_model
    from ssal.predict import structured_predict

    groups = [g.to(device) for g in model.group_indices]
    keys = ("fine_class", "fine_prob", "branch_group", "joint_class")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (*keys, "labels")}

    def keep(out: Any, labels: torch.Tensor) -> None:
        s = structured_predict(out.logits, out.branch_logits, groups, alpha)
        for key in keys:
            parts[key].append(getattr(s, key).cpu())
        parts["labels"].append(labels.cpu())

    figures = evaluate_model(
        model,
        loader,
        prepare,
        num_classes,
        alpha,
        device=device,
        description=description,
        progress=progress,
        on_batch=keep,
    )
    return figures, {k: torch.cat(v).numpy() for k, v in parts.items()}


@dataclass
class RunResult:
    """A run evaluated for the report: its info, figures, per-sample outputs and log."""

    source: RunSource
    info: dict[str, Any]
    test: dict[str, Any]
    outputs: dict[str, np.ndarray]
    heldout: dict[str, Any] | None = None
    alpha: float = 0.0
    alpha_source: str = "checkpoint"
    log: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def groupings(self) -> list[Grouping]:
        return list(self.info.get("groupings") or [])

    @property
    def class_names(self) -> list[str]:
        names = self.info.get("class_names")
        return list(names) if names else [str(c) for c in range(self.info["num_classes"])]


def _data_key(data: Mapping[str, Any] | None) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def evaluate_run(
    source: RunSource,
    data_dir: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    alpha: float | None = None,
    datamodule: Any | None = None,
    heldout: Mapping[str, Any] | None = None,
    progress: bool = False,
    cache: dict[str, Any] | None = None,
) -> RunResult:
    """Evaluate one run's checkpoint for the report (held-out split first, then test split).

    SSAL runs: the held-out split gives accuracy against alpha and, unless ``alpha`` is given,
    the alpha used on the test split (``heldout`` may pass figures already computed there).
    ``datamodule``: use this set-up datamodule instead of rebuilding the checkpoint's;
    ``cache`` shares rebuilt datamodules between runs trained on the same data.
    """
    from ssal.evaluate import build_datamodule
    from ssal.train import load_checkpoint

    model, info = load_checkpoint(source.checkpoint)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dm = datamodule
    if dm is None:
        overrides = {"data_dir": data_dir, "eval_batch_size": batch_size}
        key = _data_key(info.get("data")) + _data_key(overrides)
        cache = {} if cache is None else cache
        if key not in cache:
            cache[key] = build_datamodule(info.get("data"), **overrides)
        dm = cache[key]

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return dm.prepare_batch(x, False)

    n = info["num_classes"]
    held = dict(heldout) if heldout is not None else None
    if model.num_branches and held is None:
        held, _ = collect_outputs(
            model,
            dm.heldout_dataloader(),
            prepare,
            n,
            float(info["alpha"]),
            dev,
            progress,
            f"{source.name}: held-out split",
        )
    if not model.num_branches:
        chosen, origin = 0.0, "no branches"
    elif alpha is not None:
        chosen, origin = float(alpha), "given"
    elif held is not None and "best_alpha" in held:
        chosen, origin = float(held["best_alpha"]), "held-out split"
    else:
        chosen, origin = float(info["alpha"]), "checkpoint"
    test, outputs = collect_outputs(
        model, dm.test_dataloader(), prepare, n, chosen, dev, progress, f"{source.name}: test split"
    )
    log = read_metrics_csv(source.metrics_csv) if source.metrics_csv else {}
    return RunResult(source, info, test, outputs, held, chosen, origin, log)


# ----------------------------------------------------------------------------- analysis
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
    c = results[0].info["num_classes"] if results else 0
    return sorted((g for g in levels if g.num_classes == c), key=lambda g: g.num_groups)


def analyse_run(result: RunResult, levels: Sequence[Grouping]) -> dict[str, Any]:
    """The paper's analysis and the hierarchy-aware metrics of one evaluated run."""
    o = result.outputs
    groupings = result.groupings
    n_classes = result.info["num_classes"]
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


# ------------------------------------------------------------------------------- plots
def plot_training_curves(
    log: Mapping[str, Mapping[str, list[float]]], title: str
) -> tuple[bytes | None, dict[str, Any]]:
    """Loss terms against step (train lines, validation markers), accuracies against epoch.

    Returns ``(png bytes or None, plotted data)``; ``None`` when the log holds nothing to plot.
    """
    losses = {k: v for k, v in log.items() if k.split("/")[-1].startswith("loss")}
    losses = {k: v for k, v in losses.items() if k.startswith(("train/", "val/"))}
    accs = {
        k: v
        for k, v in log.items()
        if k.startswith("val/acc_") or k in ("val/kept_accuracy", "val/kept_fraction")
    }
    if not losses and not accs:
        return None, {}
    data: dict[str, Any] = {"losses": {}, "accuracy": {}}
    fig = figure(8.0, 3.0)
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = {}
    palette = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
    for key in sorted(losses, key=lambda k: (k.split("/")[-1] != "loss", k.split("/")[-1], k)):
        term = key.split("/")[-1]
        color = colors.setdefault(term, palette[len(colors) % len(palette)])
        s = losses[key]
        val = key.startswith("val/")
        ax_loss.plot(
            s["step"],
            s["value"],
            color=color,
            marker="o" if val else None,
            linestyle="--" if val else "-",
            markersize=4,
            linewidth=1.2 if val else 0.9,
            label=key,
        )
        data["losses"][key] = {"step": s["step"], "value": s["value"]}
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss terms (train: lines, val: markers)", fontsize=9)
    labels = {"val/acc_fine": "+TR (fine head)", "val/acc_joint": "+JP (joint)"}
    for key in sorted(accs, key=lambda k: (k not in labels, k)):
        s = accs[key]
        epochs = [e + 1 for e in s["epoch"]]
        style = "-" if key in labels else ":"
        ax_acc.plot(epochs, s["value"], style, marker="o", markersize=4, label=labels.get(key, key))
        data["accuracy"][key] = {"epoch": epochs, "value": s["value"]}
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation")
    ax_acc.set_title("accuracy per epoch", fontsize=9)
    for ax in (ax_loss, ax_acc):
        if ax.lines:
            ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig), data


def plot_confusion(
    confusion: np.ndarray,
    order: np.ndarray,
    names: Sequence[str],
    boundaries: Sequence[Grouping],
    title: str,
) -> tuple[bytes, dict[str, Any]]:
    """Row-normalised confusion matrix, classes in ``order``, group boundaries drawn.

    ``boundaries``: up to two groupings, coarse first (solid red, then dashed orange lines).
    """
    m = np.asarray(confusion, dtype=np.float64)[np.ix_(order, order)]
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    c = len(order)
    side = min(9.0, max(4.0, 0.28 * c + 2.0))
    fig = figure(side, side * 0.9)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    if c <= 40:
        labels = [names[i] for i in order]
        ax.set_xticks(range(c), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(c), labels, fontsize=7)
    styles = [("C3", "-", 1.0), ("C1", "--", 0.6)]
    for g, (color, style, width) in zip(boundaries, styles, strict=False):
        groups = g.assignment[order]
        for edge in np.flatnonzero(groups[1:] != groups[:-1]):
            ax.axhline(edge + 0.5, color=color, linestyle=style, linewidth=width)
            ax.axvline(edge + 0.5, color=color, linestyle=style, linewidth=width)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    return png_bytes(fig), {"order": order, "matrix": m.astype(np.int64)}


def plot_alpha(results: Sequence[RunResult]) -> tuple[bytes | None, dict[str, Any]]:
    """+JP accuracy against alpha on the held-out and test splits of every SSAL run."""
    ssal = [r for r in results if r.groupings]
    if not ssal:
        return None, {}
    fig = figure(6.0, 3.4)
    ax = fig.subplots()
    data: dict[str, Any] = {}
    for i, r in enumerate(ssal):
        color = f"C{i}"
        entry: dict[str, Any] = {"alpha": r.alpha, "alpha_source": r.alpha_source}
        for split, figures, style in (("test", r.test, "-"), ("heldout", r.heldout, "--")):
            if not figures or "joint_accuracy_by_alpha" not in figures:
                continue
            curve = figures["joint_accuracy_by_alpha"]
            alphas = [float(a) for a in curve]
            accs = [float(v) for v in curve.values()]
            ax.plot(alphas, accs, style, color=color, marker=".", label=f"{r.source.name} {split}")
            entry[split] = {"alpha": alphas, "accuracy": accs}
        ax.axvline(r.alpha, color=color, linewidth=0.8, alpha=0.6)
        data[r.source.name] = entry
    for r in results:
        if not r.groupings:
            acc = r.test["fine_accuracy"]
            ax.axhline(acc, color="0.4", linestyle=":", label=f"{r.source.name} (no branches) test")
            data[r.source.name] = {"test_fine_accuracy": acc}
    ax.set_xlabel("alpha (combination factor); vertical lines: alpha used")
    ax.set_ylabel("+JP accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png_bytes(fig), data


def plot_risk_coverage(
    results: Sequence[RunResult], analyses: Sequence[Mapping[str, Any]]
) -> tuple[bytes, dict[str, Any]]:
    """Risk (fine head's error rate on what is kept) against coverage, per run and ranking."""
    fig = figure(6.0, 3.6)
    ax = fig.subplots()
    data: dict[str, Any] = {}
    for i, (r, a) in enumerate(zip(results, analyses, strict=True)):
        data[r.source.name] = {}
        for how, style in (("confidence", "-"), ("disagreement", "--")):
            curve = a["risk_coverage"].get(how)
            if curve is None:
                continue
            ax.plot(
                curve["coverage"],
                curve["risk"],
                style,
                color=f"C{i}",
                label=f"{r.source.name}, by {how} (AURC {curve['aurc']:.4f})",
            )
            data[r.source.name][how] = curve
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("risk (error rate of the fine head)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png_bytes(fig), data


def plot_class_change(
    before: RunResult,
    after: RunResult,
    acc_before: np.ndarray,
    acc_after: np.ndarray,
    order: np.ndarray,
) -> tuple[bytes, dict[str, Any]]:
    """Per-class test accuracy of ``after`` minus ``before``, classes in group order."""
    delta = (np.asarray(acc_after) - np.asarray(acc_before))[order]
    names = after.class_names
    c = len(order)
    fig = figure(min(12.0, max(5.0, 0.25 * c + 2.0)), 3.4)
    ax = fig.subplots()
    colors = ["C2" if d >= 0 else "C3" for d in np.nan_to_num(delta)]
    ax.bar(range(c), 100 * delta, color=colors)
    ax.axhline(0, color="0.3", linewidth=0.8)
    if c <= 40:
        ax.set_xticks(range(c), [names[i] for i in order], rotation=90, fontsize=7)
    else:
        ax.set_xlabel("class (in group order)")
    ax.set_ylabel("accuracy change (points)")
    ax.set_title(f"per-class test accuracy: {after.source.name} minus {before.source.name}")
    ax.grid(alpha=0.3, axis="y")
    return png_bytes(fig), {
        "before": before.source.name,
        "after": after.source.name,
        "order": order,
        "delta": delta,
    }


# -------------------------------------------------------------------------------- html
def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _summary_rows(
    results: Sequence[RunResult], analyses: Sequence[Mapping[str, Any]]
) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(label: str, values: Iterable[str]) -> None:
        rows.append([label, *values])

    add("model", (str(r.info["model"]) for r in results))
    add("epochs trained", (str((r.info.get("epoch") or 0) + 1) for r in results))
    add("test images", (str(r.test["num_samples"]) for r in results))
    add("fine head (+TR)", (_pct(r.test["fine_accuracy"]) for r in results))
    add(
        "joint (+JP)",
        (_pct(r.test["joint_accuracy"]) if r.groupings else "-" for r in results),
    )
    add(
        "alpha used (chosen on)",
        (f"{r.alpha:g} ({r.alpha_source})" if r.groupings else "-" for r in results),
    )
    most = max((len(r.groupings) for r in results), default=0)
    for i in range(most):
        add(
            f"branch {i + 1} (coarse accuracy)",
            (_pct(r.test["branch_accuracy"][i]) if i < len(r.groupings) else "-" for r in results),
        )
    add(
        "all heads agree: share",
        (
            _pct(a["set_aside"]["kept_fraction"]) if r.groupings else "-"
            for r, a in zip(results, analyses, strict=True)
        ),
    )
    add(
        "all heads agree: accuracy",
        (
            _pct(a["set_aside"]["kept_accuracy"]) if r.groupings else "-"
            for r, a in zip(results, analyses, strict=True)
        ),
    )
    add(
        "AURC, abstain by confidence",
        (_num(a["risk_coverage"]["confidence"]["aurc"]) for a in analyses),
    )
    add(
        "AURC, abstain by disagreement",
        (
            _num(a["risk_coverage"]["disagreement"]["aurc"])
            if "disagreement" in a["risk_coverage"]
            else "-"
            for a in analyses
        ),
    )
    return rows


def _set_aside_table(r: RunResult, a: Mapping[str, Any]) -> str:
    s = a["set_aside"]
    rows = [
        ["all images: fine head right", _pct(s["fine_accuracy"]), str(s["num_samples"])],
        ["kept (every branch agrees): fine head right", _pct(s["kept_accuracy"]), str(s["kept"])],
        ["share kept", _pct(s["kept_fraction"]), ""],
        ["set aside: fine head right", _pct(s["set_aside_fine_accuracy"]), str(s["set_aside"])],
        ["set aside: +JP right", _pct(s.get("set_aside_joint_accuracy")), ""],
    ]
    for i, v in enumerate(s["set_aside_branch_accuracy"]):
        rows.append([f"set aside: branch {i + 1} right (its groups)", _pct(v), ""])
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
            [f"{h} {cond} ({int(counts[i])})", *(_pct(v) for v in p[key][i])]
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
            _pct(lv["coarse_accuracy"]),
        ]
        for lv in h["levels"]
    ]
    rows.append(["mistakes", str(h["num_mistakes"])])
    rows.append(["mean mistake severity (levels crossed)", _num(h["mean_severity"], 3)])
    for s, count in enumerate(h["severity_histogram"]):
        share = count / h["num_mistakes"] if h["num_mistakes"] else float("nan")
        rows.append([f"mistakes crossing {s} of {len(h['levels'])} levels", _pct(share)])
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


def _side_by_side(title: str, names: Sequence[str], bodies: Iterable[str]) -> str:
    """A section with one block per run (its name over its body), side by side."""
    e = html.escape
    blocks = "".join(f"<div><h3>{e(n)}</h3>{b}</div>" for n, b in zip(names, bodies, strict=True))
    return f"<h2>{e(title)}</h2><div class='runs'>{blocks}</div>"


def build_report(
    results: Sequence[RunResult], title: str = "ssal report"
) -> tuple[str, dict[str, Any]]:
    """The HTML page for evaluated runs, and the data it plots (also embedded in the page)."""
    if not results:
        raise ValueError("no runs to report")
    if len({r.info["num_classes"] for r in results}) > 1:
        raise ValueError("the runs have different numbers of classes; report them separately")
    levels = hierarchy_levels(results)
    analyses = [analyse_run(r, levels) for r in results]
    n_classes = results[0].info["num_classes"]
    order = analysis.group_order(levels, n_classes)
    boundaries = list(levels[:2])
    e = html.escape
    data: dict[str, Any] = {"title": title, "class_order": order, "runs": []}
    sections: list[str] = []

    names = [r.source.name for r in results]
    summary = html_table(["", *names], _summary_rows(results, analyses))
    sections.append(
        "<h2>Summary (test split)</h2>" + summary + '<p class="note">+TR: the fine head of a '
        "model trained with SSAL branches; +JP: the joint prediction of all heads, with alpha "
        "chosen on the held-out split. AURC: area under the risk-coverage curve (lower is "
        "better).</p>"
    )

    runs = list(zip(results, analyses, strict=True))
    curves_html = []
    for r, a in runs:
        png, plotted = plot_training_curves(r.log, f"{r.source.name}: training curves")
        curves_html.append(img_tag(png, "training curves"))
        entry = {
            "name": r.source.name,
            "checkpoint": r.source.checkpoint,
            "metrics_csv": r.source.metrics_csv,
            "model": r.info["model"],
            "epoch": r.info.get("epoch"),
            "alpha": r.alpha,
            "alpha_source": r.alpha_source,
            "groupings": r.groupings,
            "test": {k: v for k, v in r.test.items() if k != "confusion"},
            "heldout": (
                {k: v for k, v in r.heldout.items() if k != "confusion"} if r.heldout else None
            ),
            "training_curves": plotted,
            **{k: v for k, v in a.items()},
        }
        data["runs"].append(entry)
    sections.append(_side_by_side("Training curves", names, curves_html))

    png, plotted = plot_alpha(results)
    data["accuracy_by_alpha"] = plotted
    sections.append(
        "<h2>Accuracy against alpha</h2>"
        + img_tag(png, "accuracy against alpha (no SSAL run)")
        + '<p class="note">+JP accuracy as a function of the combination factor alpha on the '
        "held-out split (dashed) and the test split (solid); alpha is chosen on the held-out "
        "split.</p>"
    )

    png, plotted = plot_risk_coverage(results, analyses)
    sections.append(
        "<h2>Risk against coverage</h2>"
        + img_tag(png, "risk-coverage")
        + '<p class="note">Abstaining on the least trusted images first: by the fine head\'s '
        "confidence (max softmax), or by disagreement (images where more branches disagree "
        "with the fine head go first, ties by confidence). Risk is the fine head's error rate "
        "on the images kept.</p>"
    )

    sections.append(
        _side_by_side(
            "Set-aside analysis (the paper's)",
            names,
            (
                _set_aside_table(r, a) if r.groupings else "<p class='note'>no branches.</p>"
                for r, a in runs
            ),
        )
        + '<p class="note">Predictions where some branch disagrees with the fine head (the '
        "branch's group is not the group of the fine class) are set aside as doubtful.</p>"
    )
    sections.append(
        _side_by_side("Pairwise table of heads", names, (_pairwise_tables(a) for _, a in runs))
        + '<p class="note">Row: the condition (head i right, or wrong, with its count); column: '
        "how often head j is right then. The fine head is right when its class is the label, "
        "branch i when its group is the label's group.</p>"
    )
    sections.append(
        _side_by_side("Hierarchy-aware metrics", names, (_hierarchy_table(r, a) for r, a in runs))
        + '<p class="note">Levels: '
        + e(", ".join(g.name for g in levels) or "none")
        + ". Coarse accuracy: the fine head's class falls into the label's group. Mistake "
        "severity: for each wrong answer, the number of levels at which answer and label lie in "
        "different groups (0: a near miss inside the label's group at every level), averaged "
        "over the mistakes; baselines are judged on the same levels.</p>"
    )

    if len(results) >= 2:
        before = next((r for r in results if not r.groupings), results[0])
        after = next((r for r in results if r is not before and r.groupings), None)
        after = after or next(r for r in results if r is not before)
        ia, ib = results.index(before), results.index(after)
        png, plotted = plot_class_change(
            before,
            after,
            analyses[ia]["per_class_accuracy"],
            analyses[ib]["per_class_accuracy"],
            order,
        )
        data["class_change"] = plotted
        sections.append("<h2>Per-class accuracy change</h2>" + img_tag(png, "per-class change"))

    confusions = (
        plot_confusion(
            a["confusion"], order, r.class_names, boundaries, f"{r.source.name}: fine head"
        )[0]
        for r, a in runs
    )
    sections.append(
        _side_by_side(
            "Confusion matrices (test split, classes ordered by groups)",
            names,
            (img_tag(png, "confusion matrix") for png in confusions),
        )
        + "".join(
            f'<p class="note">{kind} lines: the groups of {e(g.name)}.</p>'
            for kind, g in zip(("Solid red", "Dashed orange"), boundaries, strict=False)
        )
    )
    sections.append("<h2>Groupings</h2>" + _groupings_html(results, levels))

    run_list = "".join(
        f"<li><b>{e(r.source.name)}</b>: {e(str(r.info['model']))}, checkpoint "
        f"<code>{e(str(r.source.checkpoint))}</code></li>"
        for r in results
    )
    return html_page(title, f"<ul>{run_list}</ul>", sections, data)


def write_report(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    alpha: float | None = None,
    datamodule: Any | None = None,
    heldout: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Evaluate the runs in ``paths`` and write the report (default ``report.html`` in the
    first); returns its path and the plotted data.

    ``heldout`` maps run names to figures already computed on the held-out split (the demo
    passes its own to save a pass).
    """
    sources = find_runs(paths)
    cache: dict[str, Any] = {}
    results = [
        evaluate_run(
            s,
            data_dir,
            device,
            batch_size,
            alpha,
            datamodule,
            (heldout or {}).get(s.name),
            progress,
            cache,
        )
        for s in sources
    ]
    first = Path(paths[0])
    target = Path(out) if out else (first if first.is_dir() else first.parent) / "report.html"
    title = "ssal report: " + " vs ".join(s.name for s in sources)
    page, data = build_report(results, title)
    return write_text(target, page), data
