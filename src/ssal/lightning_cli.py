"""``ssal fit|validate|test``: Lightning's CLI with ssal's defaults.

Configs are YAML mirroring the classes' arguments (``model:`` is ``SSALModule``, ``data:`` a
datamodule, ``trainer:`` Lightning's own); every value can be overridden on the command line.
Mistakes in either end in one line (``ConfigError``) that names the key, where it came from
and, where one is close, the key that was meant.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ssal.callbacks import LastAndBestCheckpoint, RunReport
from ssal.checkpoint import read_card, read_checkpoint
from ssal.config_errors import ConfigError, explain_config_error, plain_validation_error
from ssal.config_files import check_config, config_files
from ssal.errors import UserError
from ssal.files import squeeze
from ssal.grouping import load_groupings
from ssal.resume import Interrupted, after_interrupt, resolve_resume
from ssal.train import SSALModule
from ssal.trainer import AUTO_GROUPINGS_ENV, SSALTrainer, derive_groupings

log = logging.getLogger("ssal")

__all__ = ["SSALCLI", "run_lightning_cli"]


class SSALCLI(LightningCLI):
    """LightningCLI for ``SSALModule`` with CSV + TensorBoard logs and last/best checkpoints.

    Ctrl-C during ``fit`` ends in ``Interrupted``, whose message says how to resume the run
    or, before its first checkpoint, how to start afresh (Lightning's own answer to Ctrl-C is
    ``exit(1)`` after a graceful stop).
    """

    seed_given = False
    """Whether the command set ``seed_everything`` to a number (a drawn seed is new each time)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")
        argv = list(given) if isinstance(given, list) else sys.argv[1:]
        try:
            super().__init__(*args, **kwargs)
        except SystemExit:
            trainer = getattr(self, "trainer", None)
            if trainer is None or not trainer.interrupted:
                raise
            self._stopped(argv)
        except KeyboardInterrupt:
            self._stopped(argv)

    def _stopped(self, argv: Sequence[str]) -> None:
        """Ctrl-C: for ``fit``, ``Interrupted`` naming what can be resumed."""
        trainer = getattr(self, "trainer", None)
        if getattr(self, "subcommand", None) != "fit" or trainer is None:
            raise KeyboardInterrupt from None
        run = Path(trainer.log_dir) if trainer.log_dir else None
        saved = getattr(trainer.checkpoint_callback, "last_model_path", "")
        checkpoint = Path(saved) if saved else None
        if (checkpoint is None or not checkpoint.is_file()) and run is not None:
            checkpoint = run / "checkpoints" / "last.ckpt"
        raise Interrupted(after_interrupt(argv, run, checkpoint)) from None

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # errors raise (and become one line) instead of printing the usage and exiting;
        # abbreviated keys are typos, not shortcuts
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

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
                "trainer.enable_model_summary": False,  # RunReport says what was built
                # progress bars only where someone watches them (not in logs or pipes)
                "trainer.enable_progress_bar": sys.stdout.isatty(),
                "trainer.logger": {
                    "class_path": "ssal.loggers.ResumableCSVLogger",
                    "init_args": {"save_dir": "runs", "name": "ssal"},
                },
            }
        )

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a config whose values do not fit the classes it
        names (a number where a mapping belongs, ...) is a ``ConfigError``, not a
        traceback."""
        try:
            super().instantiate_classes()
        except (TypeError, AttributeError, KeyError) as e:
            raise ConfigError(f"the config does not fit the classes it names ({e})") from None
        except ValueError as e:  # a class refused a value; the data's comes wrapped in a Union
            if "Does not validate against any of the Union subtypes" not in str(e):
                raise
            raise ConfigError(f"data.init_args: {plain_validation_error(str(e))}") from None

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        trainer = cfg.trainer
        if not hasattr(trainer, "get"):  # jsonargparse lets a list through
            raise UserError(f"trainer: must be a mapping of Trainer arguments, got {trainer!r}")
        if trainer.get("deterministic") and trainer.get("benchmark"):
            trainer.benchmark = None  # cuDNN's timed kernel choice is not deterministic
        _runs_under_root_dir(trainer)
        if self.subcommand == "fit":
            current = self._config_as_saved() if cfg.get("ckpt_path") == "last" else {}
            resolve_resume(cfg, current, self.seed_given)

    def _config_as_saved(self) -> dict:
        """This command's config as Lightning's CLI writes it into the run folder."""
        import yaml

        dumped = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        return dumped.get(self.subcommand) or {}

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

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; then a missing, corrupt or foreign ``--ckpt_path`` file is one line before
        Lightning reads it."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        path = cfg.get("ckpt_path")
        if path and path != "last" and not Path(path).is_dir():
            read_checkpoint(path)
        seed = cfg.get("seed_everything")
        self.seed_given = isinstance(seed, int) and not isinstance(seed, bool)

    def _load_data(self) -> None:
        """Read the data before any run folder exists: a missing dataset leaves no trace."""
        self.datamodule.prepare_data()
        self.datamodule.setup("fit" if self.subcommand == "fit" else "test")

    def before_validate(self) -> None:
        self._load_data()
        self._add_tensorboard()

    def before_test(self) -> None:
        self._load_data()
        self._add_tensorboard()

    def before_fit(self) -> None:
        trainer = self.trainer
        self._load_data()
        # a training part smaller than a batch is one line before the run says anything
        self.datamodule.train_dataloader()
        self._add_tensorboard()
        trainer.callbacks.append(LearningRateMonitor("epoch"))
        trainer.callbacks.append(RunReport())
        if self.model.awaits_groupings:
            self._auto_groupings()

    def _auto_groupings(self) -> None:
        """``groupings: auto`` before the SSAL model's ``fit``: a resumed run's from its
        checkpoint, a process that Lightning's launcher started takes the launching one's,
        otherwise the probe runs here (once, before the launcher starts other processes)."""
        trainer, module = self.trainer, self.model
        ckpt_path = self.config["fit"].get("ckpt_path")
        shared = os.environ.get(AUTO_GROUPINGS_ENV)
        if ckpt_path:
            module.set_groupings(list(read_card(ckpt_path).groupings) or None)
        elif shared:
            module.set_groupings(load_groupings(shared, num_classes=module.num_classes)[0])
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                "groupings: auto needs Lightning's own launcher (trainer.devices > 1 on one "
                "machine); under torchrun or SLURM run `ssal group --checkpoint BASELINE.ckpt` "
                "first and pass --model.groupings.source FILE"
            )
        else:
            device = trainer.strategy.root_device
            path = derive_groupings(
                module,
                self.datamodule,
                Path(trainer.log_dir or trainer.default_root_dir) / "groupings.json",
                accelerator=device.type,
                devices=[device.index or 0] if device.type == "cuda" else 1,
                precision=trainer.precision,
                limit_train_batches=trainer.limit_train_batches,
                progress=trainer.progress_bar_callback is not None,
            )
            if trainer.world_size > 1:  # the processes the launcher starts inherit it
                os.environ[AUTO_GROUPINGS_ENV] = str(path.resolve())


def _runs_under_root_dir(trainer: Any) -> None:
    """``--trainer.default_root_dir DIR`` puts the default logger's runs under ``DIR``."""
    root, logger = trainer.get("default_root_dir"), trainer.get("logger")
    if not root or not hasattr(logger, "get") or "CSVLogger" not in str(logger.get("class_path")):
        return
    args = logger.get("init_args")
    if args is not None and args.get("save_dir") in (None, "runs"):
        args["save_dir"] = str(Path(root) / "runs")


def run_lightning_cli(argv: Sequence[str]) -> int:
    """Run ``ssal fit|validate|test ...`` (argv starts with the subcommand)."""
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    for path in config_files(argv):
        check_config(path)
    inherited = AUTO_GROUPINGS_ENV in os.environ
    try:
        SSALCLI(
            SSALModule,
            L.LightningDataModule,
            trainer_class=SSALTrainer,
            subclass_mode_data=True,
            args=list(argv),
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except ArgumentError as e:
        raise explain_config_error(str(e), argv) from None
    except MisconfigurationException as e:  # Lightning's word for a setting it cannot use
        raise ConfigError(squeeze(e)[:300]) from None
    finally:
        if not inherited:  # a later run in this process derives its own groupings
            os.environ.pop(AUTO_GROUPINGS_ENV, None)
    return 0
