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


def _before_resume(row: dict[str, str], step: int, epoch: int | None = None) -> bool:
    """Whether a ``metrics.csv`` row belongs before the checkpoint a run resumes from (taken
    after ``epoch``, at global ``step``). Rows at that very step stay only when they carry an
    epoch no later than the checkpoint's (its last validation): the first training row of the
    next epoch and the learning rate logged at its start (no epoch) share the step, and the
    resumed run logs both again."""
    if not row.get("step"):
        return True
    at = int(float(row["step"]))
    if at != step:
        return at < step
    if not row.get("epoch"):
        return False
    return epoch is None or int(float(row["epoch"])) <= epoch


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that appends to the run's ``metrics.csv`` instead of deleting it.

    ``resume_step`` and ``resume_epoch``: the global step and epoch of the checkpoint a run
    resumes from. Rows logged after it are dropped (the resumed run logs them again, so nothing
    is lost and nothing is counted twice). Lightning's writer deletes an existing
    ``metrics.csv`` when it is made; the rows are read before and written back after, through
    public API only.
    """

    def __init__(
        self,
        *args: Any,
        resume_step: int | None = None,
        resume_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self.resume_epoch = resume_epoch
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
                rows = [r for r in rows if _before_resume(r, self.resume_step, self.resume_epoch)]
            writer.metrics_keys = sorted(keys)
            with fs.open(path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)
        return writer
