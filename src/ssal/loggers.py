"""Logging and safety callbacks for long runs: logs that survive a resume, a NaN guard."""

from __future__ import annotations

import csv
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard", "ResumableCSVLogger"]


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (a resumed run) and appends to it.

    Rows logged after the step a run resumes from are dropped first: the resumed run logs
    them again, so nothing is lost and nothing is counted twice.
    """

    resume_step: int | None = None

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = list(reader)
        self.metrics_keys = sorted(keys)
        if self.resume_step is not None:
            kept = [r for r in rows if not r.get("step") or int(r["step"]) <= self.resume_step]
            if len(kept) != len(rows):
                with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                    writer.writeheader()
                    writer.writerows(kept)


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that appends to the run's ``metrics.csv`` instead of deleting it.

    ``resume_step``: the global step of the checkpoint a run resumes from (rows past it are
    dropped, the resumed run writes them again).
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        writer_cls = type("_Writer", (_AppendingWriter,), {"resume_step": self.resume_step})
        self._experiment = writer_cls(log_dir=self.log_dir)
        return self._experiment


class NonFiniteLossError(ValueError):
    """Training stopped because the loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Stops training when the loss turns NaN/inf, saying at which step, before anything is saved.

    The check reads one flag from the device every ``every_n_steps`` steps (no host sync per
    step); checkpoints are written only at epoch ends, so the last good one stays as it is.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self._bad: torch.Tensor | None = None
        self._first_bad_step: torch.Tensor | None = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        step = torch.tensor(trainer.global_step, device=bad.device)
        if self._bad is None:
            self._bad = torch.zeros((), dtype=torch.bool, device=bad.device)
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=bad.device)
        self._first_bad_step = torch.where(self._bad | ~bad, self._first_bad_step, step)
        self._bad = self._bad | bad
        last = batch_idx + 1 == trainer.num_training_batches
        if trainer.global_step % self.every_n_steps == 0 or last:
            self._raise_if_bad(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: L.Trainer) -> None:
        if self._bad is None:
            return
        if trainer.strategy.reduce_boolean_decision(bool(self._bad), all=False):
            step = int(self._first_bad_step)
            ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none yet"
            raise NonFiniteLossError(
                f"the loss became NaN or infinite at step {step} (epoch {trainer.current_epoch}); "
                f"training stopped, the last good checkpoint is kept ({ckpt}); lower the "
                "learning rate or check the data"
            )
