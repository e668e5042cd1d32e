"""``ssal fit|validate|test``: Lightning's CLI with ssal's defaults and the ``auto`` groupings.

Configs are YAML mirroring the classes' arguments (``model:`` is ``SSALModule``, ``data:`` a
datamodule, ``trainer:`` Lightning's own); every value can be overridden on the command line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ssal.evaluate import heldout_confusion
from ssal.grouping import Grouping, save_groupings
from ssal.loggers import NonFiniteLossGuard, use_loss_progress_bar
from ssal.train import SSALModule, read_checkpoint, resolve_groupings

AUTO_GROUPINGS_ENV = "SSAL_AUTO_GROUPINGS"

__all__ = ["SSALCLI", "derive_groupings", "run_lightning_cli"]


def derive_groupings(
    module: SSALModule,
    datamodule: L.LightningDataModule,
    out: str | Path,
    trainer_kwargs: dict | None = None,
) -> list[Grouping]:
    """The paper's workflow: train a short baseline probe, group its held-out confusion.

    The probe is the same network without branches, trained ``probe_epochs`` epochs; the
    confusion matrix comes from the held-out split (never the test set). Writes ``out``.
    """
    hp = {k: v for k, v in module.hparams.items() if not k.startswith("_")}
    hp.update(groupings=None, compile=False)
    probe = SSALModule(**hp)
    kwargs = {"accelerator": "auto", "devices": 1, **(trainer_kwargs or {})}
    kwargs.update(
        max_epochs=module.hparams.probe_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    L.Trainer(**kwargs).fit(probe, datamodule)
    datamodule.setup("fit")
    device = probe.device
    confusion = heldout_confusion(
        probe.net,
        datamodule.heldout_dataloader(),
        lambda x: datamodule.prepare_batch(x, False),
        module.hparams.num_classes,
        device,
    )
    sizes = module.hparams.auto_groups or list(module.entry.paper_groups)
    groupings = [
        Grouping.from_confusion(confusion, g, module.hparams.auto_mode, seed=0) for g in sizes
    ]
    save_groupings(out, groupings, datamodule.class_names)
    return groupings


class SSALCLI(LightningCLI):
    """LightningCLI for ``SSALModule`` with CSV + TensorBoard logs and last/best checkpoints."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
        if module.hparams.groupings != "auto" or module.groupings:
            return
        # Rank 0 derives the groupings before Lightning starts the other processes, which
        # inherit the file's path; ranks started by torchrun/SLURM cannot wait for it.
        shared = os.environ.get(AUTO_GROUPINGS_ENV)
        if shared:
            out = Path(shared)
        elif trainer.is_global_zero and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            out = Path(trainer.log_dir or trainer.default_root_dir) / "groupings.json"
            derive_groupings(module, self.datamodule, out, {"accelerator": "auto"})
            os.environ[AUTO_GROUPINGS_ENV] = str(out.resolve())
        else:
            raise ValueError(
                "groupings: auto needs Lightning's own launcher (trainer.devices > 1 on one "
                "machine); under torchrun or SLURM run `ssal group --checkpoint BASELINE.ckpt` "
                "first and pass --model.groupings FILE"
            )
        module.set_groupings(resolve_groupings(str(out), module.hparams.num_classes))


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
    found = sorted(
        (int(p.parent.parent.name.split("_", 1)[1]), p)
        for p in root.glob("version_*/checkpoints/last.ckpt")
        if p.parent.parent.name.split("_", 1)[1].isdigit()
    )
    if not found:
        raise FileNotFoundError(
            f"no checkpoint to resume: nothing matches {root}/version_*/checkpoints/last.ckpt"
        )
    version, path = found[-1]
    ckpt = read_checkpoint(path)
    args.version = version
    if "ResumableCSVLogger" in str(logger.get("class_path")):
        args.resume_step = int(ckpt.get("global_step", 0))
    cfg.ckpt_path = str(path)


def run_lightning_cli(argv: Sequence[str]) -> int:
    """Run ``ssal fit|validate|test ...`` (argv starts with the subcommand)."""
    inherited = AUTO_GROUPINGS_ENV in os.environ
    try:
        _cli(argv)
    finally:
        if not inherited:  # a later run in this process derives its own groupings
            os.environ.pop(AUTO_GROUPINGS_ENV, None)
    return 0


def _cli(argv: Sequence[str]) -> None:
    SSALCLI(
        SSALModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
