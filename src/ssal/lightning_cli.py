"""``ssal fit|validate|test``: Lightning's CLI with ssal's defaults.

Configs are YAML mirroring the classes' arguments (``model:`` is ``SSALModule``, ``data:`` a
datamodule, ``trainer:`` Lightning's own); every value can be overridden on the command line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ssal.callbacks import (
    AutoGroupings,
    LastAndBestCheckpoint,
    NonFiniteLossGuard,
    use_loss_progress_bar,
)
from ssal.checkpoint import CHECKPOINT_KEY, groupings_of, read_checkpoint
from ssal.runs import latest_checkpoint
from ssal.train import SSALModule

__all__ = ["SSALCLI", "run_lightning_cli"]


class SSALCLI(LightningCLI):
    """LightningCLI for ``SSALModule`` with CSV + TensorBoard logs and last/best checkpoints."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")
        parser.add_lightning_class_args(LastAndBestCheckpoint, "checkpoint")
        import torch

        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        parser.set_defaults(
            {
                "trainer.precision": "bf16-mixed" if fast else "32-true",
                # cuDNN times its kernels for each conv shape once (the branches' 1x3/3x1
                # convolutions are far from its heuristics' sweet spot)
                "trainer.benchmark": True if torch.cuda.is_available() else None,
                "checkpoint.save_last": True,
                "checkpoint.monitor": "val/acc_fine",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-{epoch}",
                "trainer.logger": {
                    "class_path": "ssal.loggers.ResumableCSVLogger",
                    "init_args": {"save_dir": "runs", "name": "ssal"},
                },
            }
        )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_loss_progress_bar(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer
        if trainer.get("deterministic") and trainer.get("benchmark"):
            trainer.benchmark = None  # cuDNN's timed kernel choice is not deterministic
        if self.subcommand == "fit" and self.config["fit"].get("ckpt_path") == "last":
            _resolve_last(self.config["fit"])

    def _add_tensorboard(self) -> None:
        """Log to TensorBoard too, inside the CSV logger's run folder (one folder per run)."""
        loggers = list(self.trainer.loggers)
        csv = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
        if csv is None or any(isinstance(lg, TensorBoardLogger) for lg in loggers):
            return
        try:
            tb = TensorBoardLogger(csv.log_dir, name="", version="tensorboard")
        except ModuleNotFoundError:  # tensorboard not installed: CSV alone
            return
        self.trainer.loggers = [*loggers, tb]

    def before_validate(self) -> None:
        self._add_tensorboard()

    def before_test(self) -> None:
        self._add_tensorboard()

    def before_fit(self) -> None:
        trainer, module = self.trainer, self.model
        self._add_tensorboard()
        trainer.callbacks.append(LearningRateMonitor("epoch"))
        trainer.callbacks.insert(0, NonFiniteLossGuard(trainer.log_every_n_steps))
        ckpt_path = self.config["fit"].get("ckpt_path")
        if ckpt_path and module.awaits_groupings:  # a resumed auto run keeps its groupings
            info = read_checkpoint(ckpt_path)[CHECKPOINT_KEY]
            module.set_groupings(groupings_of(info) or None)
        elif trainer.world_size > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            # Lightning's launcher starts the other processes after this: derive here, once
            AutoGroupings.derive_before_launch(trainer, module, self.datamodule)


def _resolve_last(cfg: Any) -> None:
    """``--ckpt_path last``: resume the newest run of this logger's folder, in that folder.

    Lightning's own ``last`` looks only in a new run's (empty) folder; here the newest
    ``version_K/checkpoints/last.ckpt`` is found, the logger writes on into ``version_K`` and
    its ``metrics.csv`` keeps the rows up to the checkpoint's step.
    """
    logger = cfg.trainer.logger
    if isinstance(logger, list):
        logger = next((lg for lg in logger if "CSVLogger" in str(lg.get("class_path"))), None)
    if not logger or "CSVLogger" not in str(logger.get("class_path")):
        raise ValueError("--ckpt_path last needs the default CSV logger; give --ckpt_path FILE")
    args = logger.init_args
    root = Path(args.get("save_dir") or "runs") / (args.get("name") or "lightning_logs")
    version, path = latest_checkpoint(root)
    ckpt = read_checkpoint(path)
    args.version = version
    if "ResumableCSVLogger" in str(logger.get("class_path")):
        args.resume_step = int(ckpt.get("global_step", 0))
    cfg.ckpt_path = str(path)


def run_lightning_cli(argv: Sequence[str]) -> int:
    """Run ``ssal fit|validate|test ...`` (argv starts with the subcommand)."""
    inherited = AutoGroupings.ENV in os.environ
    try:
        SSALCLI(
            SSALModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            args=list(argv),
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    finally:
        if not inherited:  # a later run in this process derives its own groupings
            os.environ.pop(AutoGroupings.ENV, None)
    return 0
