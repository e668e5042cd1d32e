"""The one place ssal builds a Lightning ``Trainer``, and the probe of ``groupings: auto``.

``SSALTrainer`` is Lightning's ``Trainer`` (same arguments) whose ``fit`` adds ssal's guards
to every run, wherever it is built (``ssal fit``, the demo, the bench, the probe): the NaN
guard, the progress bars that read the loss only when they redraw, and a logging interval
that still gives short runs loss curves. ``build_trainer`` builds one; ``derive_groupings``
trains a module's network without branches (the probe), groups its held-out confusion and
gives the module its branches: a visible phase before the SSAL model's ``fit``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from ssal.callbacks import NOTE, NonFiniteLossGuard, ShortRunLogInterval, use_loss_progress_bar
from ssal.evaluate import groupings_from_model
from ssal.grouping import save_groupings

__all__ = [
    "AUTO_GROUPINGS_ENV",
    "SSALTrainer",
    "build_trainer",
    "derive_groupings",
]

log = logging.getLogger("ssal")

AUTO_GROUPINGS_ENV = "SSAL_AUTO_GROUPINGS"
"""Under Lightning's multi-process launcher: the groupings file the launching process derived,
for the processes it starts (they inherit the environment)."""


class SSALTrainer(L.Trainer):
    """Lightning's ``Trainer`` with ssal's guards added when ``fit`` starts: the NaN guard,
    the loss-on-redraw progress bars (``bar_label`` prefixes the training bar) and the
    logging interval of short runs. ``ssal fit`` uses it as LightningCLI's trainer class."""

    bar_label = ""

    def fit(self, model: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        """``Trainer.fit`` with the guards in place (added once per trainer)."""
        if not any(isinstance(c, NonFiniteLossGuard) for c in self.callbacks):
            use_loss_progress_bar(self, label=self.bar_label)
            self.callbacks.insert(0, NonFiniteLossGuard())
            self.callbacks.insert(0, ShortRunLogInterval())
        super().fit(model, *args, **kwargs)


def build_trainer(bar_label: str = "", **kwargs: Any) -> SSALTrainer:
    """An ``SSALTrainer`` with Lightning's ``Trainer`` arguments ``kwargs``."""
    trainer = SSALTrainer(**kwargs)
    trainer.bar_label = bar_label
    return trainer


def derive_groupings(
    module: Any,
    datamodule: Any,
    out: str | Path,
    *,
    accelerator: str = "auto",
    devices: Any = 1,
    precision: Any = None,
    limit_train_batches: int | float | None = None,
    progress: bool = True,
) -> Path:
    """``groupings: auto``: the probe phase, before the SSAL model's ``fit``.

    ``module``'s network, still without branches, trains for ``probe_epochs`` (no logger,
    checkpoints or validation; compiled never); its held-out confusion is grouped into
    ``auto_groups`` (default: the model's paper sizes) with ``auto_mode`` and written to the
    groupings file ``out``; then ``module`` is rebuilt with its branches. The network is built
    twice in all: for the probe, and with branches. Returns ``out``.
    """
    args = module.grouping_args
    epochs = args.probe_epochs
    # the SSAL model it leads to must build and run on the data: found now, not after training
    module.check_runs_on(int(datamodule.in_channels), getattr(datamodule, "image_size", None))
    log.log(
        NOTE,
        "probe: training %s without branches for %d epoch%s to group its confusion",
        module.network.name,
        epochs,
        "s" if epochs != 1 else "",
    )
    trainer = build_trainer(
        "probe: ",
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        max_epochs=epochs,
        limit_train_batches=limit_train_batches,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    sizes = args.auto_groups or list(module.entry.group_sizes(module.num_classes))
    device = trainer.strategy.root_device
    borrowed = datamodule.trainer
    module.probing = True  # a probe runs eagerly: compiling it would not pay off
    try:
        trainer.fit(module, datamodule)
        groupings, _ = groupings_from_model(
            module.net, datamodule, sizes, args.auto_mode, device=device
        )
    finally:
        module.probing = False
        datamodule.trainer = borrowed  # the probe's trainer borrowed it
    path = save_groupings(out, groupings, datamodule.class_names)
    log.log(NOTE, "groupings (%s) from the probe's held-out confusion: %s", args.auto_mode, path)
    module.set_groupings(groupings)
    return Path(path)
