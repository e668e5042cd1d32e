"""Resuming ``ssal fit``: the same run or none.

``--ckpt_path last`` resumes the newest run of the logger's folder whose saved config (the
``config.yaml`` Lightning's CLI writes into every run folder) is this command's, apart from
``RESUME_MAY_CHANGE``; ``--ckpt_path RUN_FOLDER`` resumes the run the user names. Either way the
logger writes on into that run's folder. When Ctrl-C stops a run, ``after_interrupt`` says how
to resume it, or, before its first checkpoint, that nothing can be resumed and how to start
afresh.
"""

from __future__ import annotations

import fnmatch
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssal.callbacks import NOTE
from ssal.checkpoint import read_checkpoint
from ssal.errors import UserError
from ssal.files import read_text
from ssal.runs import resumable_runs

__all__ = [
    "RESUME_MAY_CHANGE",
    "Interrupted",
    "after_interrupt",
    "config_differences",
    "resolve_resume",
]

log = logging.getLogger("ssal")

RESUME_MAY_CHANGE = (
    "ckpt_path",
    "trainer.max_epochs",  # train a run on for longer
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.enable_progress_bar",  # its default follows whether stdout is a terminal
    "trainer.logger*.init_args.version",  # set by resuming itself
    "trainer.logger*.init_args.resume_step",
    "trainer.logger*.init_args.resume_epoch",
)
"""Config keys (``fnmatch`` patterns) in which a resuming command may differ from its run."""


class Interrupted(Exception):
    """Ctrl-C stopped ``ssal fit``; the message says what can be done next."""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A config as ``{dotted.key: value}``; lists of mappings (loggers) count from 0."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix.rstrip("."): value}
    out: dict[str, Any] = {}
    for key, sub in items:
        out.update(_flat(sub, f"{prefix}{key}."))
    return out


def config_differences(saved: dict, current: dict, compare_seed: bool = True) -> list[str]:
    """Keys whose values differ between a run's saved config and ``current`` (both as
    Lightning's CLI dumps them), apart from ``RESUME_MAY_CHANGE``; ``seed_everything`` too
    unless ``compare_seed`` (a seed Lightning drew itself is new on every command)."""
    a, b = _flat(saved), _flat(current)
    may_change = [*RESUME_MAY_CHANGE, *([] if compare_seed else ["seed_everything"])]
    return sorted(
        key
        for key in set(a) | set(b)
        if a.get(key) != b.get(key) and not any(fnmatch.fnmatch(key, p) for p in may_change)
    )


def _saved_config(run: Path) -> dict | None:
    """The config a run folder was made with (Lightning's ``config.yaml``), if it has one."""
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(read_text(path))
    except (ValueError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def _csv_logger(cfg: Any) -> Any:
    """The CSV logger's entry of a parsed ``fit`` config (resuming writes on in its folder)."""
    logger = cfg.trainer.logger
    if isinstance(logger, list):
        logger = next((lg for lg in logger if "CSVLogger" in str(lg.get("class_path"))), None)
    if not logger or "CSVLogger" not in str(logger.get("class_path")):
        raise UserError(
            "--ckpt_path last or RUN_FOLDER needs the default CSV logger; give --ckpt_path FILE"
        )
    return logger


def _run_root(logger: Any) -> Path:
    args = logger.init_args
    return Path(args.get("save_dir") or "runs") / (args.get("name") or "lightning_logs")


def _last_run(root: Path, current: dict, compare_seed: bool) -> Path:
    """The newest run under ``root`` with a checkpoint and this config; a ``UserError`` naming
    the newest other run when there is none."""
    runs = resumable_runs(root)
    if not runs:
        raise FileNotFoundError(
            f"no checkpoint to resume: nothing matches {root}/version_*/checkpoints/last.ckpt"
        )
    for run in runs:
        saved = _saved_config(run)
        if saved is not None and not config_differences(saved, current, compare_seed):
            return run
    newest = runs[0]
    saved = _saved_config(newest)
    why = (
        f"differs in {', '.join(config_differences(saved, current, compare_seed)[:3])}"
        if saved is not None
        else "has no config.yaml"
    )
    raise UserError(
        f"--ckpt_path last: no run in {root} was made with this config (the newest, {newest}, "
        f"{why}); start afresh without --ckpt_path, or resume a run by its folder: "
        f"--ckpt_path {newest}"
    )


def _point_logger_at(logger: Any, run: Path) -> None:
    """Make the CSV logger write on into ``run`` (its ``metrics.csv`` kept)."""
    args = logger.init_args
    name = run.name
    if run.parent != _run_root(logger):
        args.save_dir, args.name = str(run.parent.parent), run.parent.name
    number = name.split("_", 1)[1] if name.startswith("version_") else ""
    args.version = int(number) if number.isdigit() else name


def resolve_resume(cfg: Any, current: dict, compare_seed: bool) -> None:
    """Turn ``--ckpt_path last`` or ``--ckpt_path RUN_FOLDER`` of a parsed ``fit`` config into
    that run's ``checkpoints/last.ckpt``, with the logger writing on into its folder and its
    ``metrics.csv`` keeping the rows up to the checkpoint's step. ``current``: this command's
    config as Lightning's CLI dumps it; other ``ckpt_path`` values stay as they are."""
    given = cfg.get("ckpt_path")
    if given != "last" and not (given and Path(given).is_dir()):
        return
    logger = _csv_logger(cfg)
    if given == "last":
        run = _last_run(_run_root(logger), current, compare_seed)
    else:
        run = Path(given)
        if not (run / "checkpoints" / "last.ckpt").is_file():
            raise FileNotFoundError(f"{run}: no checkpoints/last.ckpt to resume from")
    path = run / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(path)
    step = int(ckpt.get("global_step", 0))
    _point_logger_at(logger, run)
    if "ResumableCSVLogger" in str(logger.get("class_path")):
        logger.init_args.resume_step = step
        logger.init_args.resume_epoch = int(ckpt.get("epoch", 0))
    cfg.ckpt_path = str(path)
    log.log(NOTE, "resuming from %s (after epoch %s, step %d)", path, ckpt.get("epoch"), step)


def _command(argv: Sequence[str], ckpt_path: str | None) -> str:
    """``argv`` as a command line, its ``--ckpt_path`` replaced by ``ckpt_path`` (or none)."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--ckpt_path":
            skip = True
        elif not a.startswith("--ckpt_path="):
            args.append(a)
    if ckpt_path is not None:
        args += ["--ckpt_path", ckpt_path]
    return "ssal " + " ".join(shlex.quote(a) for a in args)


def after_interrupt(argv: Sequence[str], run: Path | None, checkpoint: Path | None) -> str:
    """What to print when Ctrl-C stopped ``ssal fit`` (``argv`` from the subcommand on) in the
    run folder ``run``: the command that resumes it from ``checkpoint``, or, where there is
    none yet, that nothing can be resumed and the command that starts afresh."""
    if checkpoint is None or not checkpoint.is_file():
        return (
            "interrupted before the first checkpoint, nothing to resume; start afresh with: "
            + _command(argv, None)
        )
    if run is not None and checkpoint == run / "checkpoints" / "last.ckpt":
        return f"interrupted; resume with: {_command(argv, str(run))}"
    return f"interrupted; resume with: {_command(argv, str(checkpoint))}"
