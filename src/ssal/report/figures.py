"""The reports' figures: matplotlib on its Agg canvas (no display, no pyplot state), drawn from
plain data, returned as PNG bytes together with the data they plot.

Each ``plot_*`` returns ``(png, data)``; ``data`` holds every plotted number (and, where a
caption names line styles, the style each series was drawn in) so pages embed it and tests
check it without reading pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ssal.errors import UserError
from ssal.grouping import Grouping

__all__ = [
    "figure",
    "plot_alpha",
    "plot_class_change",
    "plot_confusion",
    "plot_convergence",
    "plot_differences",
    "plot_risk_coverage",
    "plot_study_accuracy",
    "plot_training_curves",
    "png_bytes",
]

DPI = 90
ALPHA_STYLES = {"heldout": "--", "test": "-"}  # the alpha plot's caption names these
_LINESTYLE_NAMES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dashdot"}


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas, size in inches."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("reports need matplotlib: pip install matplotlib") from None

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes, with no timestamp or software tag (same input, same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _legend_below(ax: Any, fontsize: int = 7, ncol: int = 2) -> None:
    """A legend under the axes, where it covers no curve."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            fontsize=fontsize,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.22),
            ncol=ncol,
            frameon=False,
        )


# ------------------------------------------------------------------------------ runs
def _loss_order(key: str) -> tuple:
    term = key.split("/")[-1]
    return term != "loss", term, key


def plot_training_curves(
    log: Mapping[str, Mapping[str, list[float]]], title: str
) -> tuple[bytes | None, dict[str, Any]]:
    """Loss terms against step (train: lines, validation: dashed with markers); +TR, +JP and
    branch accuracies against epoch, with the share of images where all heads agree on its own
    axis. ``None`` when the log holds nothing to plot."""
    losses = {
        k: v
        for k, v in log.items()
        if k.split("/")[-1].startswith("loss") and k.startswith(("train/", "val/"))
    }
    accs = {k: v for k, v in log.items() if k.startswith("val/acc_") or k == "val/kept_accuracy"}
    kept = log.get("val/kept_fraction")
    if not losses and not accs:
        return None, {}
    data: dict[str, Any] = {"losses": {}, "accuracy": {}, "kept_fraction": None}
    fig = figure(9.0, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors: dict[str, str] = {}
    for key in sorted(losses, key=_loss_order):
        term = key.split("/")[-1]
        color = colors.setdefault(term, f"C{len(colors) % 10}")
        s, val = losses[key], key.startswith("val/")
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
    ax_loss.set(xlabel="step", ylabel="loss")
    ax_loss.set_title("loss terms (train: lines, val: dashed)", fontsize=9)
    labels = {"val/acc_fine": "+TR (fine head)", "val/acc_joint": "+JP (joint)"}
    for key in sorted(accs, key=lambda k: (k not in labels, k)):
        s = accs[key]
        epochs = [e + 1 for e in s["epoch"]]
        style = "-" if key in labels else ":"
        ax_acc.plot(epochs, s["value"], style, marker="o", markersize=4, label=labels.get(key, key))
        data["accuracy"][key] = {"epoch": epochs, "value": s["value"]}
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy")
    ax_acc.set_title("accuracy per epoch", fontsize=9)
    if kept is not None:
        share = ax_acc.twinx()
        epochs = [e + 1 for e in kept["epoch"]]
        share.plot(epochs, kept["value"], color="0.5", linestyle="-.", label="share all agree")
        share.set_ylabel("share of images where all heads agree", fontsize=8)
        share.set_ylim(0, 1.02)
        data["kept_fraction"] = {"epoch": epochs, "value": kept["value"]}
        lines = ax_acc.get_legend_handles_labels()
        more = share.get_legend_handles_labels()
        ax_acc.legend(
            lines[0] + more[0],
            lines[1] + more[1],
            fontsize=6,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.22),
            ncol=2,
            frameon=False,
        )
    else:
        _legend_below(ax_acc, 6)
    _legend_below(ax_loss, 6, 3)
    for ax in (ax_loss, ax_acc):
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
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(title, fontsize=10)
    return png_bytes(fig), {"order": order, "matrix": m.astype(np.int64)}


def plot_alpha(runs: Sequence[Mapping[str, Any]]) -> tuple[bytes | None, dict[str, Any]]:
    """+JP accuracy against alpha: per SSAL run the held-out curve (dashed, where alpha is
    chosen) and the test curve (solid), a vertical line at the alpha used; baselines as dotted
    horizontal lines.

    ``runs``: dicts with ``name`` and either ``baseline_accuracy`` (no branches) or ``alpha``,
    ``alpha_source`` and the ``heldout``/``test`` ``joint_accuracy_by_alpha`` curves. The data
    records each series' ``linestyle`` as drawn.
    """
    if not any("baseline_accuracy" not in r for r in runs):
        return None, {}
    fig = figure(6.5, 3.8)
    ax = fig.subplots()
    data: dict[str, Any] = {}
    for i, r in enumerate(x for x in runs if "baseline_accuracy" not in x):
        color, entry = f"C{i}", {"alpha": r["alpha"], "alpha_source": r["alpha_source"]}
        for split in ("heldout", "test"):
            curve = r.get(split)
            if not curve:
                continue
            alphas, accs = [float(a) for a in curve], [float(v) for v in curve.values()]
            (line,) = ax.plot(
                alphas,
                accs,
                linestyle=ALPHA_STYLES[split],
                color=color,
                marker=".",
                label=f"{r['name']}: {'held-out' if split == 'heldout' else 'test'} split",
            )
            style = _LINESTYLE_NAMES.get(line.get_linestyle(), line.get_linestyle())
            entry[split] = {"alpha": alphas, "accuracy": accs, "linestyle": style}
        ax.axvline(r["alpha"], color=color, linewidth=0.8, alpha=0.6)
        data[r["name"]] = entry
    for r in runs:
        if "baseline_accuracy" in r:
            acc = r["baseline_accuracy"]
            ax.axhline(acc, color="0.4", linestyle=":", label=f"{r['name']} (no branches): test")
            data[r["name"]] = {"test_fine_accuracy": acc, "linestyle": "dotted"}
    ax.set(xlabel="alpha (combination factor); vertical line: alpha used", ylabel="+JP accuracy")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return png_bytes(fig), data


def plot_risk_coverage(
    curves: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> tuple[bytes, dict[str, Any]]:
    """Risk (the fine head's error rate on what is kept) against coverage, per run (colour)
    and ranking (``confidence`` solid, ``disagreement`` dashed)."""
    fig = figure(6.5, 4.0)
    ax = fig.subplots()
    data: dict[str, Any] = {}
    for i, (name, by) in enumerate(curves.items()):
        data[name] = {}
        for how, style in (("confidence", "-"), ("disagreement", "--")):
            curve = by.get(how)
            if curve is None:
                continue
            ax.plot(
                curve["coverage"],
                curve["risk"],
                style,
                color=f"C{i}",
                label=f"{name}, by {how} (AURC {curve['aurc']:.4f})",
            )
            data[name][how] = curve
    ax.set(xlabel="coverage (share of images answered)", ylabel="risk (error rate of fine head)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=1)
    return png_bytes(fig), data


def plot_class_change(
    before: str, after: str, delta: np.ndarray, names: Sequence[str]
) -> tuple[bytes, dict[str, Any]]:
    """Per-class test accuracy of ``after`` minus ``before`` (``delta``, in the order of
    ``names``: classes in group order)."""
    c = len(delta)
    fig = figure(min(12.0, max(5.0, 0.25 * c + 2.0)), 3.4)
    ax = fig.subplots()
    colors = ["C2" if d >= 0 else "C3" for d in np.nan_to_num(delta)]
    ax.bar(range(c), 100 * np.asarray(delta), color=colors)
    ax.axhline(0, color="0.3", linewidth=0.8)
    if c <= 40:
        ax.set_xticks(range(c), list(names), rotation=90, fontsize=7)
    else:
        ax.set_xlabel("class (in group order)")
    ax.set_ylabel("accuracy change (points)")
    ax.set_title(f"per-class test accuracy: {after} minus {before}")
    ax.grid(alpha=0.3, axis="y")
    return png_bytes(fig), {"before": before, "after": after, "delta": delta}


# ----------------------------------------------------------------------------- studies
def _finite(v: Any) -> float:
    return float("nan") if v is None else float(v)


def plot_study_accuracy(summary: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """+TR and +JP per config: mean with ± std error bars, each seed as a dot."""
    names = list(summary["configs"])
    fig = figure(max(4.5, 1.3 * len(names) + 2.0), 3.6)
    ax = fig.subplots()
    data: dict[str, Any] = {"configs": names, "fine": {}, "joint": {}}
    heads = (
        ("fine", "fine_accuracy", "+TR (fine head)", "C0", -0.12),
        ("joint", "joint_accuracy", "+JP (joint)", "C1", 0.12),
    )
    for key, field, label, color, dx in heads:
        for i, name in enumerate(names):
            c = summary["configs"][name]
            if key == "joint" and not c.get("has_branches"):
                continue
            mean, std = 100 * _finite(c[field]["mean"]), 100 * _finite(c[field]["std"])
            seeds = [100 * v for v in c["per_seed"][key]]
            ax.errorbar(
                i + dx,
                mean,
                yerr=0 if math.isnan(std) else std,
                fmt="o",
                color=color,
                capsize=4,
                markersize=6,
                label=label,
            )
            ax.scatter([i + dx] * len(seeds), seeds, s=16, color=color, alpha=0.5, zorder=1)
            data[key][name] = {"mean": mean, "std": std, "seeds": seeds}
    base = summary["configs"].get(summary["baseline"])
    if base is not None:
        ax.axhline(100 * base["fine_accuracy"]["mean"], color="0.4", linestyle="--", linewidth=0.9)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        "accuracy per config: mean ± std over seeds, dots: seeds; dashed: baseline", fontsize=9
    )
    ax.grid(alpha=0.3, axis="y")
    return png_bytes(fig), data


def plot_differences(
    rows: Sequence[Mapping[str, Any]], baseline: str, xlabel: str | None = None
) -> bytes | None:
    """Forest plot: per row (``config``, ``head``, ``mean``, ``ci95``; points unless
    ``xlabel`` says otherwise) the paired difference from the baseline with its 95% interval
    (open marker: one seed)."""
    if not rows:
        return None
    fig = figure(6.5, 0.45 * len(rows) + 1.4)
    ax = fig.subplots()
    for y, r in enumerate(rows):
        color = "C0" if r["head"] == rows[0]["head"] else "C1"
        if r["ci95"] is None:
            ax.plot(r["mean"], y, "o", color=color, fillstyle="none")
        else:
            lo, hi = r["ci95"]
            xerr = [[r["mean"] - lo], [hi - r["mean"]]]
            ax.errorbar(r["mean"], y, xerr=xerr, fmt="o", color=color, capsize=4)
    ax.axvline(0, color="0.3", linewidth=0.9)
    ax.set_yticks(range(len(rows)), [f"{r['config']} {r['head']}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel or f"difference from {baseline} +TR (points)")
    ax.set_title(
        "paired difference with 95% t-interval over seeds (open: one seed, no interval)", fontsize=9
    )
    ax.grid(alpha=0.3, axis="x")
    return png_bytes(fig)


def plot_convergence(summary: Mapping[str, Any]) -> tuple[bytes | None, dict[str, Any]]:
    """Test accuracy of the fine head per epoch: mean over seeds with a ± std band."""
    from matplotlib.ticker import MaxNLocator

    data: dict[str, Any] = {"target": None, "configs": {}}
    fig = figure(6.5, 3.8)
    ax = fig.subplots()
    for k, (name, c) in enumerate(summary["configs"].items()):
        curves = [cv for cv in c.get("curves", []) if cv]
        if not curves:
            continue
        n = min(len(cv) for cv in curves)  # epochs every seed has
        arr = 100 * np.array([cv[:n] for cv in curves], dtype=float)
        mean = arr.mean(axis=0)
        std = arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros(n)
        epochs = np.arange(1, n + 1)
        ax.plot(epochs, mean, marker="o", markersize=3, color=f"C{k}", label=name)
        ax.fill_between(epochs, mean - std, mean + std, color=f"C{k}", alpha=0.2, linewidth=0)
        data["configs"][name] = {"epoch": epochs, "mean": mean, "std": std}
    if not data["configs"]:
        return None, data
    target = summary.get("baseline_final_accuracy")
    if target is not None:
        data["target"] = 100 * target
        ax.axhline(
            100 * target,
            color="0.4",
            linestyle="--",
            linewidth=0.9,
            label=f"{summary['baseline']} final (mean)",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="test accuracy of the fine head (%)")
    ax.set_title("convergence: mean ± std over seeds", fontsize=9)
    _legend_below(ax)
    ax.grid(alpha=0.3)
    return png_bytes(fig), data
