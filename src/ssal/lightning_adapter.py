"""The few private names of Lightning that ssal uses, all here and nowhere else.

Lightning has no public way to save ``last.ckpt`` outside its own schedule, nor to read the
settings a progress bar was made with. A Lightning release may rename or change what these
functions call without any error at import: ``tests/test_lightning_adapter.py`` checks, on the
installed Lightning, that each name exists with the signature used here (the versions it
passed on are in ``pyproject.toml``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar

__all__ = ["PRIVATE_NAMES", "attached_trainer", "bar_settings", "save_last_checkpoint"]

PRIVATE_NAMES = {
    L.LightningModule: ("_trainer",),
    ModelCheckpoint: (
        "_should_skip_saving_checkpoint",
        "_should_save_on_train_epoch_end",
        "_monitor_candidates",
        "_save_last_checkpoint",
    ),
    TQDMProgressBar: ("_leave",),
    RichProgressBar: ("_leave", "_console_kwargs"),
}
"""Each private name used below, by the class that holds it (the adapter test's list)."""


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The trainer ``module`` is attached to, or None (``module.trainer`` raises then)."""
    return module._trainer


def save_last_checkpoint(
    callback: ModelCheckpoint, trainer: L.Trainer, on_train_epoch_end: bool
) -> None:
    """Save ``callback``'s ``last.ckpt`` now, unless the callback does not save one, saved at
    this step already, or saves at the other hook (``on_train_epoch_end``: whether this is
    called from the end of the training epoch or from the end of validation)."""
    if (
        callback.save_last
        and not callback._should_skip_saving_checkpoint(trainer)
        and callback._should_save_on_train_epoch_end(trainer) == on_train_epoch_end
    ):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def bar_settings(bar: TQDMProgressBar | RichProgressBar) -> dict[str, Any]:
    """The arguments ``bar`` was made with, to make the same bar again as another class."""
    if isinstance(bar, RichProgressBar):
        return {
            "refresh_rate": bar.refresh_rate,
            "leave": bar._leave,
            "theme": bar.theme,
            "console_kwargs": bar._console_kwargs,
        }
    return {
        "refresh_rate": bar.refresh_rate,
        "process_position": bar.process_position,
        "leave": bar._leave,
    }
