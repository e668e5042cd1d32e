"""Callbacks of ssal's training runs: a NaN guard, the logging interval of short runs, and
progress bars that read the loss only when they redraw (``ssal.trainer.SSALTrainer`` adds
them to every run)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar

from ssal.errors import UserError
from ssal.lightning_adapter import bar_settings, save_last_checkpoint

__all__ = [
    "NOTE",
    "LastAndBestCheckpoint",
    "LossProgressBar",
    "LossRichProgressBar",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "RunReport",
    "ShortRunLogInterval",
    "log_interval",
    "use_loss_progress_bar",
]

log = logging.getLogger("ssal")
NOTE = 25  # ssal's notes on what a run does: above INFO, which libraries fill, below WARNING
logging.addLevelName(NOTE, "NOTE")


def log_interval(requested: int, batches: int) -> int:
    """Steps between logged training rows: ``requested``, or a quarter of the ``batches`` a
    run trains per epoch where ``requested`` would log fewer than two rows an epoch (short
    runs still get loss curves)."""
    return max(1, batches // 4) if requested > max(1, batches // 2) else requested


class ShortRunLogInterval(Callback):
    """Sets the trainer's ``log_every_n_steps`` to ``log_interval`` of what the user asked for
    and the batches this run trains per epoch (the loader's, cut by ``limit_train_batches``
    and ``max_steps``), once they are known."""

    def __init__(self) -> None:
        self.requested: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.requested is None:
            self.requested = trainer.log_every_n_steps
        batches = trainer.num_training_batches
        if trainer.max_steps > 0:
            batches = min(batches, trainer.max_steps)
        if batches != float("inf"):
            trainer.log_every_n_steps = log_interval(self.requested, int(batches))


class RunReport(Callback):
    """A line each for what a run trains and where it writes, and its checkpoints at the end
    (through the ``ssal`` logger: the command line shows them, Python users may)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        folder = trainer.log_dir  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        net = pl_module.net
        params = sum(p.numel() for p in net.parameters())
        if net.num_branches:
            what = f"{net.num_branches} SSAL branches ({', '.join(g.name for g in net.groupings)})"
        else:
            what = "no branches (a baseline)"
        limits = [  # Lightning sets -1 (no limit) for whichever of the two is not given
            f"{n} {unit}{'s' if n != 1 else ''}"
            for n, unit in ((trainer.max_epochs, "epoch"), (trainer.max_steps, "step"))
            if n is not None and n > 0
        ]
        epochs = "at most " + " or ".join(limits) if len(limits) == 2 else "".join(limits)
        epochs = epochs or "no epoch or step limit"
        log.log(
            NOTE,
            "training %s with %s: %s parameters, %s on %s",
            getattr(net, "name", type(net.backbone).__name__),
            what,
            f"{params:,}",
            epochs,
            trainer.strategy.root_device,
        )
        if folder:
            log.log(NOTE, "run folder: %s", folder)

    def teardown(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        # after ``on_fit_end``: the progress bars (earlier in the callback list) have stopped
        # drawing by now, so these lines are neither glued to a bar nor erased by its redraw
        ckpt = trainer.checkpoint_callback
        if stage != "fit" or not trainer.is_global_zero or ckpt is None:
            return
        if getattr(ckpt, "last_model_path", ""):
            log.log(NOTE, "last checkpoint: %s", ckpt.last_model_path)
        if ckpt.best_model_path and ckpt.best_model_score is not None:
            score = float(ckpt.best_model_score)
            log.log(
                NOTE, "best checkpoint: %s (%s %.4f)", ckpt.best_model_path, ckpt.monitor, score
            )


class LastAndBestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is the latest state after every
    epoch, as resuming and evaluation expect. (Since Lightning 2.6, ``save_last`` writes it
    only when a top-k checkpoint was written, so a run whose monitored figure stopped
    improving would resume from its best epoch, not its last.)"""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        save_last_checkpoint(self, trainer, on_train_epoch_end=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        save_last_checkpoint(self, trainer, on_train_epoch_end=False)


class _LossOnRedraw:
    """Shows the training loss taken from each step's output, turned into a number (a host
    sync on a GPU) at most once every ``read_every`` steps, instead of Lightning's way: a metric
    logged with ``prog_bar=True`` is read after every step, whether a bar is shown or not.
    ``v_num`` is the first logger's version (the CSV run folder)."""

    def __init__(self, *args: Any, read_every: int = 1, label: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_every = max(1, int(read_every))
        self.label = label
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

    def on_train_epoch_start(self, trainer, *args: Any) -> None:  # noqa: ANN001
        super().on_train_epoch_start(trainer, *args)
        if self.label:
            self.train_progress_bar.set_description(f"{self.label}Epoch {trainer.current_epoch}")


class LossRichProgressBar(_LossOnRedraw, RichProgressBar):
    """Lightning's rich bar (its default when rich is installed) with the training loss read
    at most every ``read_every`` steps (rich redraws the metrics after every step)."""

    def on_train_epoch_start(self, trainer, *args: Any) -> None:  # noqa: ANN001
        super().on_train_epoch_start(trainer, *args)
        if self.label and self.progress is not None and self.train_progress_bar_id is not None:
            description = self.label + self.train_progress_bar.description
            self.progress.update(self.train_progress_bar_id, description=description)
            self.refresh()


# Steps between reads of the loss for the progress bar on a GPU (each read waits for it).
GPU_READ_EVERY = 25


def use_loss_progress_bar(
    trainer: L.Trainer, read_every: int | None = None, label: str = ""
) -> None:
    """Swap Lightning's tqdm or rich bar (its default, or one configured with its settings) for
    the subclass above with the same settings; other bars, or none, stay as they are.

    ``read_every`` defaults to 25 steps on CUDA and every step elsewhere; ``label`` prefixes
    the training bar's description.
    """
    from lightning.pytorch.accelerators import CUDAAccelerator

    if read_every is None:
        read_every = GPU_READ_EVERY if isinstance(trainer.accelerator, CUDAAccelerator) else 1
    for i, cb in enumerate(trainer.callbacks):
        swap = {TQDMProgressBar: LossProgressBar, RichProgressBar: LossRichProgressBar}
        if type(cb) in swap:
            trainer.callbacks[i] = swap[type(cb)](
                **bar_settings(cb), read_every=read_every, label=label
            )


class NonFiniteLossError(UserError):
    """Training stopped because the loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Stops training when the loss turns NaN/inf, saying at which step, before anything is saved.

    The check reads one flag from the device every ``every_n_steps`` steps (no host sync per
    step; ``None``: the trainer's logging interval); checkpoints are written only at epoch
    ends, so the last good one stays as it is.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = None if every_n_steps is None else max(1, every_n_steps)
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
        every = self.every_n_steps or max(1, trainer.log_every_n_steps)
        if trainer.global_step % every == 0 or last:
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
