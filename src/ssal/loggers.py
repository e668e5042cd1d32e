"""Logs that survive a resume: Lightning's CSV logger appending to its ``metrics.csv``."""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["ResumableCSVLogger"]


def _before_resume(row: dict[str, str], step: int) -> bool:
    """Whether a ``metrics.csv`` row belongs before the step a run resumes from. Rows at that
    very step stay only when they carry an epoch (the last validation); rows without one there
    were logged at the start of the next epoch (the learning rate), which the resumed run
    logs again."""
    if not row.get("step"):
        return True
    at = int(float(row["step"]))
    return at < step or (at == step and bool(row.get("epoch")))


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that appends to the run's ``metrics.csv`` instead of deleting it.

    ``resume_step``: the global step of the checkpoint a run resumes from. Rows logged after it
    are dropped (the resumed run logs them again, so nothing is lost and nothing is counted
    twice). Lightning's writer deletes an existing ``metrics.csv`` when it is made; the rows
    are read before and written back after, through public API only.
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self.writer_made = False

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self.writer_made:
            return super().experiment
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        fs = get_filesystem(path)
        keys: list[str] = []
        rows: list[dict[str, str]] = []
        if fs.isfile(path):
            with fs.open(path, "r", newline="") as f:
                reader = csv.DictReader(f)
                keys, rows = list(reader.fieldnames or []), list(reader)
        writer = super().experiment  # deletes an existing metrics.csv
        self.writer_made = True
        if keys:
            if self.resume_step is not None:
                rows = [r for r in rows if _before_resume(r, self.resume_step)]
            writer.metrics_keys = sorted(keys)
            with fs.open(path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)
        return writer
