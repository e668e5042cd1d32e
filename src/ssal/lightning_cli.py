"""``ssal fit|validate|test``: Lightning's CLI with ssal's defaults.

Configs are YAML mirroring the classes' arguments (``model:`` is ``SSALModule``, ``data:`` a
datamodule, ``trainer:`` Lightning's own); every value can be overridden on the command line.
Mistakes in either end in one line (``ConfigError``) that names the key, where it came from
and, where one is close, the key that was meant.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ssal.args import flat_keys, renamed_key
from ssal.callbacks import NOTE, LastAndBestCheckpoint, RunReport
from ssal.checkpoint import CHECKPOINT_KEY, groupings_of, read_checkpoint
from ssal.grouping import load_groupings
from ssal.runs import latest_checkpoint
from ssal.train import SSALModule
from ssal.trainer import AUTO_GROUPINGS_ENV, SSALTrainer, derive_groupings

log = logging.getLogger("ssal")

__all__ = ["ConfigError", "Interrupted", "SSALCLI", "run_lightning_cli"]


class ConfigError(ValueError):
    """A config or command-line value Lightning's CLI refused, explained in one line;
    ``located`` when the line already says where the value came from."""

    def __init__(self, message: str, located: bool = False) -> None:
        super().__init__(message)
        self.located = located


class Interrupted(Exception):
    """Ctrl-C stopped a run; the message is the command that resumes it."""


MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_VALUES = 100_000
"""Most values a config may hold once YAML aliases are expanded ("billion laughs")."""


class SSALCLI(LightningCLI):
    """LightningCLI for ``SSALModule`` with CSV + TensorBoard logs and last/best checkpoints."""

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
            raise ValueError(f"trainer: must be a mapping of Trainer arguments, got {trainer!r}")
        if trainer.get("deterministic") and trainer.get("benchmark"):
            trainer.benchmark = None  # cuDNN's timed kernel choice is not deterministic
        _runs_under_root_dir(trainer)
        if self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
            _resolve_last(cfg, self._checkpoint)

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

    def _checkpoint(self, path: str | Path) -> dict[str, Any]:
        """The checkpoint at ``path``, read once (``read_checkpoint``: one line for a missing,
        corrupt or foreign file) for everything the CLI needs of it before Lightning loads it."""
        cache = self.__dict__.setdefault("_checkpoints", {})
        key = str(Path(path).resolve())
        if key not in cache:
            cache[key] = read_checkpoint(path)
        return cache[key]

    def _parse_ckpt_path(self) -> None:
        """A resumed run takes the checkpoint's model arguments (as Lightning's CLI does), from
        the one reading of the file."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or path == "last":
            return
        hparams = dict(self._checkpoint(path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

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

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SystemExit:  # Lightning's answer to Ctrl-C: exit(1) after a graceful stop
            from lightning.pytorch.trainer.states import TrainerStatus

            if self.trainer.state.status != TrainerStatus.INTERRUPTED:
                raise
            raise KeyboardInterrupt from None

    def before_fit(self) -> None:
        trainer = self.trainer
        self._load_data()
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
            module.set_groupings(groupings_of(self._checkpoint(ckpt_path)[CHECKPOINT_KEY]) or None)
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


def _resolve_last(cfg: Any, read: Any = read_checkpoint) -> None:
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
    ckpt = read(path)
    args.version = version
    if "ResumableCSVLogger" in str(logger.get("class_path")):
        args.resume_step = int(ckpt.get("global_step", 0))
    cfg.ckpt_path = str(path)
    step = int(ckpt.get("global_step", 0))
    log.log(NOTE, "resuming from %s (after epoch %s, step %d)", path, ckpt.get("epoch"), step)


def _runs_under_root_dir(trainer: Any) -> None:
    """``--trainer.default_root_dir DIR`` puts the default logger's runs under ``DIR``."""
    root, logger = trainer.get("default_root_dir"), trainer.get("logger")
    if not root or not hasattr(logger, "get") or "CSVLogger" not in str(logger.get("class_path")):
        return
    args = logger.get("init_args")
    if args is not None and args.get("save_dir") in (None, "runs"):
        args["save_dir"] = str(Path(root) / "runs")


def resume_command(argv: Sequence[str]) -> str:
    """The command that resumes an interrupted ``ssal fit`` (same options, ``--ckpt_path last``)."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--ckpt_path":
            skip = True
        elif not a.startswith("--ckpt_path="):
            args.append(a)
    return "ssal " + " ".join(shlex.quote(a) for a in [*args, "--ckpt_path", "last"])


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
        raise ConfigError(" ".join(str(e).split())[:300]) from None
    except KeyboardInterrupt:
        if argv and argv[0] == "fit":
            raise Interrupted(resume_command(argv)) from None
        raise
    finally:
        if not inherited:  # a later run in this process derives its own groupings
            os.environ.pop(AUTO_GROUPINGS_ENV, None)
    return 0


# ---------------------------------------------------------------------- config errors
def _keys_of(cls: Any, prefix: str) -> list[str]:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [f"{prefix}{n}" for n, p in params.items() if p.kind in kinds and n != "self"]


def known_keys() -> list[str]:
    """Every key a config may set: trainer, model, checkpoint, data (ssal's datamodules)."""
    import importlib

    from ssal.data.registry import DATAMODULES

    keys = ["seed_everything", "ckpt_path", "config", "trainer", "model", "data", "checkpoint"]
    keys += _keys_of(L.Trainer, "trainer.") + _keys_of(SSALModule, "model.") + flat_keys()
    keys += _keys_of(LastAndBestCheckpoint, "checkpoint.")
    for module, name in DATAMODULES.values():
        cls = getattr(importlib.import_module(module), name)
        keys += _keys_of(cls, "data.init_args.") + _keys_of(cls, "data.")
    return sorted(set(keys))


def _source(key: str, argv: Sequence[str]) -> str:
    """Where a key came from: the command line, or the config file(s)."""
    if any(a == f"--{key}" or a.startswith(f"--{key}=") for a in argv):
        return "on the command line"
    configs = [str(c) for c in config_files(argv)]
    leaf = key.rsplit(".", 1)[-1]
    named = [c for c in configs if Path(c).is_file() and leaf in Path(c).read_text()]
    return f"in {', '.join(named or configs)}" if configs else "in the config"


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, known_keys(), n=2, cutoff=0.75)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _unknown_key(message: str) -> str | None:
    """The key an "unknown option" message of jsonargparse is about, if it is one."""
    nested = re.search(
        r'Parser key "([^"]+)":.*?Option \'([^\']+)\' is not accepted', message, re.S
    )
    if nested:
        return f"{nested.group(1)}.init_args.{nested.group(2)}"
    for pattern in (r"does not accept option '([^']+)'", r"unrecognized arguments: --([^\s=]+)"):
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return None


def explain_config_error(message: str, argv: Sequence[str]) -> ConfigError:
    """One line for an error of Lightning's argument parser: which key, where (``located``),
    what to do."""
    command = argv[0] if argv else "fit"
    key = _unknown_key(message)
    if key and renamed_key(key):
        where = _source(key, argv)
        return ConfigError(f"{key} is now {renamed_key(key)} ({where})", True)
    if key:
        where = _source(key, argv)
        return ConfigError(
            f"unknown key {key} {where}{_did_you_mean(key)} (see ssal {command} --help)", True
        )
    bad = re.search(r'Parser key "([^"]+)":\s*(.*)', message, re.S)
    if bad:
        key, detail = bad.group(1), bad.group(2)
        if key == "config":
            text = " ".join(detail.split())
            return ConfigError(text.replace("File does not exist", "config file not found"))
        if renamed_key(key) and "Unable to load config" in detail:  # a value, not a group
            return ConfigError(f"{key} is now {renamed_key(key)} ({_source(key, argv)})", True)
        return ConfigError(f"{key} {_source(key, argv)}: {plain_validation_error(detail)}", True)
    return ConfigError(plain_validation_error(message))


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "text",
    "bool": "true or false",
    "NoneType": "null",
    "dict": "a mapping",
    "list": "a list",
    "tuple": "a list",
}


def _expected(found: Sequence[str]) -> str:
    """What jsonargparse's "Expected a ..." lines ask for, in words: the allowed values of
    its literals merged into one list, then the types."""
    values: list[str] = []
    types: list[str] = []
    for text in found:
        if text.startswith("typing.Literal["):
            values += [v.strip().strip("'") for v in text[len("typing.Literal[") : -1].split(",")]
        else:
            name = re.sub(r"^<class '(?:[\w.]*\.)?(\w+)'>$", r"\1", text)
            types.append(_TYPE_WORDS.get(name, name))
    words = [f"one of {', '.join(dict.fromkeys(values))}"] if values else []
    return " or ".join(words + list(dict.fromkeys(types)))


_EXPECTED = re.compile(r"Expected a (<class '[\w.]+'>|typing\.Literal\[.*?\])(?:\.|\n|$)")


def plain_validation_error(detail: str) -> str:
    """jsonargparse's account of a value that does not fit, in one short line: the reason a
    class gave (``batch_size ... must be >= 1``), or what was expected and what was given."""
    errors = re.findall(r"^\s*- (.+)$", detail, re.M)
    reasons = [e.strip() for e in errors if not e.strip().startswith("Expected a ")]
    if reasons:
        return " ".join(reasons[0].split())[:300]
    expected = _EXPECTED.findall(detail)
    given = re.search(r"(?:Given|Got) value: (.*)", detail)
    if expected:
        got = f", got {given.group(1).strip()[:80]!r}" if given else ""
        return f"expected {_expected(expected)}{got}"
    return " ".join(detail.split())[:300]
