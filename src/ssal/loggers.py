"""Logging and safety callbacks for long runs: logs that survive a resume, a NaN guard, and a
progress bar that reads the loss only when it redraws."""

from __future__ import annotations

import csv
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = [
    "LossProgressBar",
    "LossRichProgressBar",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "ResumableCSVLogger",
    "use_loss_progress_bar",
]


class _LossOnRedraw:
    """Shows the training loss taken from each step's output, turned into a number (a host
    sync on a GPU) at most once every ``read_every`` steps, instead of Lightning's way: a metric
    logged with ``prog_bar=True`` is read after every step, whether a bar is shown or not.
    ``v_num`` is the first logger's version (the CSV run folder)."""

    def __init__(self, *args: Any, read_every: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_every = max(1, int(read_every))
        self._loss: torch.Tensor | None = None
        self._scale = 1.0
        self._pending = 0
        self._text: str | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss = loss
            # automatic optimisation hands back the loss divided by the accumulation count
            accumulating = pl_module.automatic_optimization and trainer.accumulate_grad_batches
            self._scale = float(accumulating or 1)
            self._pending += 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_start(self, trainer, *args: Any) -> None:  # noqa: ANN001
        self._loss, self._text, self._pending = None, None, 0
        super().on_train_epoch_start(trainer, *args)

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:  # noqa: ANN001
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.loggers and trainer.loggers[0].version not in ("", None):
            metrics["v_num"] = str(trainer.loggers[0].version)
        if self._loss is not None and (self._text is None or self._pending >= self.read_every):
            self._text = f"{float(self._loss) * self._scale:.4g}"
            self._pending = 0
        if self._text is not None:
            metrics["loss"] = self._text
        return metrics


class LossProgressBar(_LossOnRedraw, TQDMProgressBar):
    """Lightning's tqdm bar with the training loss read at most every ``read_every`` steps."""


class LossRichProgressBar(_LossOnRedraw, RichProgressBar):
    """Lightning's rich bar (its default when rich is installed) with the training loss read
    at most every ``read_every`` steps (rich redraws the metrics after every step)."""


# Steps between reads of the loss for the progress bar on a GPU (each read waits for it).
GPU_READ_EVERY = 25


def use_loss_progress_bar(trainer: L.Trainer, read_every: int | None = None) -> None:
    """Swap Lightning's tqdm or rich bar (its default, or one configured with its settings) for
    the subclass above with the same settings; other bars, or none, stay as they are.

    ``read_every`` defaults to 25 steps on CUDA and every step elsewhere.
    """
    from lightning.pytorch.accelerators import CUDAAccelerator

    if read_every is None:
        read_every = GPU_READ_EVERY if isinstance(trainer.accelerator, CUDAAccelerator) else 1
    for i, cb in enumerate(trainer.callbacks):
        if type(cb) is TQDMProgressBar:
            trainer.callbacks[i] = LossProgressBar(
                cb.refresh_rate, cb.process_position, cb._leave, read_every=read_every
            )
        elif type(cb) is RichProgressBar:
            trainer.callbacks[i] = LossRichProgressBar(
                refresh_rate=cb.refresh_rate,
                leave=cb._leave,
                theme=cb.theme,
                console_kwargs=cb._console_kwargs,
                read_every=read_every,
            )


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
