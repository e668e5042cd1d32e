"""Logs that survive a resume: Lightning's CSV logger appending to its ``metrics.csv``."""

from __future__ import annotations

import csv
from typing import Any

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


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (a resumed run) and appends to it.

    Rows logged after the step a run resumes from are dropped first (``_before_resume``): the
    resumed run logs them again, so nothing is lost and nothing is counted twice.
    """

    resume_step: int | None = None
    resume_epoch: int | None = None

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = list(reader)
        self.metrics_keys = sorted(keys)
        if self.resume_step is not None:
            kept = [r for r in rows if _before_resume(r, self.resume_step, self.resume_epoch)]
            if len(kept) != len(rows):
                with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                    writer.writeheader()
                    writer.writerows(kept)


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that appends to the run's ``metrics.csv`` instead of deleting it.

    ``resume_step`` and ``resume_epoch``: the global step and epoch of the checkpoint a run
    resumes from (rows logged after it are dropped, the resumed run writes them again).
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

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        writer_cls = type(
            "_Writer",
            (_AppendingWriter,),
            {"resume_step": self.resume_step, "resume_epoch": self.resume_epoch},
        )
        self._experiment = writer_cls(log_dir=self.log_dir)
        return self._experiment
