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


MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_VALUES = 100_000
"""Most values a config may hold once YAML aliases are expanded ("billion laughs")."""


class SSALCLI(LightningCLI):
    """LightningCLI for ``SSALModule`` with CSV + TensorBoard logs and last/best checkpoints.

    Parse errors raise ``argparse.ArgumentError`` (``ssal fit`` prints them as one line)
    instead of printing the usage and exiting.
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("exit_on_error", False)
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
                "trainer.logger": {
                    "class_path": "ssal.loggers.ResumableCSVLogger",
                    "init_args": {"save_dir": "runs", "name": "ssal"},
                },
            }
        )

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a config whose values do not fit the classes it
        names (a number where a mapping belongs, ...) is a ``ValueError``, not a traceback."""
        try:
            super().instantiate_classes()
        except (TypeError, AttributeError, KeyError) as e:
            raise ValueError(f"the config does not fit the classes it names ({e})") from e

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_loss_progress_bar(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer
        if not hasattr(trainer, "get"):  # jsonargparse lets a list through
            raise ValueError(f"trainer: must be a mapping of Trainer arguments, got {trainer!r}")
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


def config_files(argv: Sequence[str]) -> list[Path]:
    """The files given with ``--config``/``-c`` in ``argv``."""
    found = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            found.append(Path(argv[i + 1]))
        elif arg.startswith("--config="):
            found.append(Path(arg.split("=", 1)[1]))
    return found


def _expanded_size(node: Any, seen: dict[int, int]) -> int:
    """Values a YAML node stands for with every alias expanded (memoised: linear time)."""
    if id(node) in seen:
        return seen[id(node)]
    seen[id(node)] = 1  # a recursive alias counts once instead of looping
    children = node.value if isinstance(node.value, list) else []
    items = (
        [v for pair in children for v in pair]
        if children and isinstance(children[0], tuple)
        else children
    )
    size = 1 + sum(_expanded_size(child, seen) for child in items)
    seen[id(node)] = size
    return size


def check_config(path: Path) -> None:
    """Read a config as ``ssal fit`` will, refusing what could run code or exhaust memory:
    a file over 1 MiB, text that is not UTF-8 YAML, tags that construct Python objects
    (``!!python/object``: refused by the safe loader, nothing runs) and aliases expanding to
    more than ``MAX_CONFIG_VALUES`` values. Raises ``ValueError``/``FileNotFoundError``."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, too large for a config")
    try:
        text = path.read_bytes().decode("utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_VALUES:
            raise ValueError(f"aliases expand it to more than {MAX_CONFIG_VALUES} values")
        yaml.safe_load(text)
    except (ValueError, RecursionError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise ValueError(f"{path}: not a usable config ({reason})") from None


def run_lightning_cli(argv: Sequence[str]) -> int:
    """Run ``ssal fit|validate|test ...`` (argv starts with the subcommand)."""
    for path in config_files(argv):
        check_config(path)
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
