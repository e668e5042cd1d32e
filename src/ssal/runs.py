"""Run folders: where a run's checkpoint and training log are, and what the log holds.

``ssal fit`` writes ``<save_dir>/<name>/version_N/`` with ``checkpoints/last.ckpt`` and
``metrics.csv``; ``ssal demo`` writes ``<out>/{baseline,ssal}/`` with ``model.ckpt`` and
``logs/metrics.csv``; ``ssal study`` writes ``<out>/<config>/seed<S>/ssal/fit/``. Reports,
studies and resuming all find their files here.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ssal.errors import UserError

__all__ = [
    "RunSource",
    "checkpoint_in",
    "find_runs",
    "metrics_in",
    "read_metrics_csv",
    "resumable_runs",
    "val_curve",
]

CHECKPOINT_NAMES = ("model.ckpt", "checkpoints/last.ckpt")
METRICS_NAMES = ("logs/metrics.csv", "metrics.csv")


def checkpoint_in(directory: Path) -> Path | None:
    """A run folder's checkpoint (``model.ckpt`` or ``checkpoints/last.ckpt``), if any."""
    return next((directory / c for c in CHECKPOINT_NAMES if (directory / c).is_file()), None)


def metrics_in(directory: Path) -> Path | None:
    """A run folder's ``metrics.csv`` (in ``logs/`` or beside the checkpoints), if any."""
    return next((directory / c for c in METRICS_NAMES if (directory / c).is_file()), None)


@dataclass(frozen=True)
class RunSource:
    """Where a run's checkpoint and training log live."""

    name: str
    directory: Path
    checkpoint: Path
    metrics_csv: Path | None


def _source(directory: Path, checkpoint: Path) -> RunSource:
    return RunSource(directory.resolve().name, directory, checkpoint, metrics_in(directory))


def find_runs(paths: Sequence[str | Path]) -> list[RunSource]:
    """Resolve run folders (or checkpoint files) to checkpoints and ``metrics.csv`` files.

    A folder holding no checkpoint but run sub-folders (``ssal demo``'s ``baseline/`` and
    ``ssal/``) stands for all of them, baselines first. Names that repeat get their parent's.
    """
    if not paths:
        raise UserError("no run folders given")
    found: list[RunSource] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            directory = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            found.append(_source(directory, path))
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"run folder not found: {path}")
        ckpt = checkpoint_in(path)
        if ckpt is not None:
            found.append(_source(path, ckpt))
            continue
        subs = sorted(
            (d for d in path.iterdir() if d.is_dir() and checkpoint_in(d) is not None),
            key=lambda d: (d.name != "baseline", d.name),
        )
        if not subs:
            raise FileNotFoundError(
                f"{path}: no checkpoint found; expected model.ckpt or checkpoints/last.ckpt "
                "there or in its sub-folders (e.g. baseline/ and ssal/ of ssal demo)"
            )
        found.extend(_source(d, checkpoint_in(d)) for d in subs)  # type: ignore[arg-type]
    names = [r.name for r in found]
    return [
        replace(r, name=f"{r.directory.resolve().parent.name}/{r.name}")
        if names.count(r.name) > 1
        else r
        for r in found
    ]


def resumable_runs(root: Path) -> list[Path]:
    """The run folders ``root/version_N`` that hold ``checkpoints/last.ckpt``, newest (highest
    ``N``) first."""
    found = sorted(
        (int(p.parent.parent.name.split("_", 1)[1]), p.parent.parent)
        for p in root.glob("version_*/checkpoints/last.ckpt")
        if p.parent.parent.name.split("_", 1)[1].isdigit()
    )
    return [run for _, run in reversed(found)]


def _number(raw: Any) -> float | None:
    if raw is None or str(raw).strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        return None


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
                    value = _number(raw)
                    if key in ("epoch", "step", None) or value is None:
                        continue
                    s = series.setdefault(key, {"epoch": [], "step": [], "value": []})
                    s["epoch"].append(math.nan if epoch is None else epoch)
                    s["step"].append(math.nan if step is None else step)
                    s["value"].append(value)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the training log ({e})") from None
    return series


def val_curve(metrics_csv: Path | None, key: str = "val/acc_fine") -> list[float]:
    """A validation figure after each epoch (the last value logged in each epoch)."""
    if metrics_csv is None or not Path(metrics_csv).is_file():
        return []
    s = read_metrics_csv(metrics_csv).get(key)
    if not s:
        return []
    by_epoch = {int(e): v for e, v in zip(s["epoch"], s["value"], strict=True) if e == e}
    return [by_epoch[e] for e in sorted(by_epoch)]
