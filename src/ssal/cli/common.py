"""What every ``ssal`` subcommand shares: one-line errors, the console, progress, formats."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "Parser",
    "UserError",
    "add_data_args",
    "checkpoint_data",
    "console",
    "device",
    "mean_std",
    "pct",
    "track",
]


class UserError(Exception):
    """An error the user can fix; printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and defaults in the help."""

    def error(self, message: str) -> None:  # one line, no usage dump
        raise UserError(f"{self.prog}: {message} (see --help)")


def console(stderr: bool = False) -> Any:
    """A rich console (imported lazily: ``ssal --help`` stays fast)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def track(enabled: bool = True) -> Any:
    """A progress bar on stderr for evaluation loops (``ssal.evaluate.Track``), or none."""

    def wrap(iterable: Iterable, description: str, total: int | None) -> Iterator:
        if not enabled:
            yield from iterable
            return
        from rich.progress import Progress

        with Progress(transient=True, console=console(stderr=True)) as bar:
            task = bar.add_task(description, total=total)
            for item in iterable:
                yield item
                bar.advance(task)

    return wrap


def pct(v: float | None) -> str:
    """A fraction as a percentage; ``-`` for None or NaN (nothing to measure)."""
    return "-" if v is None or v != v else f"{100 * v:.2f}%"


def mean_std(m: dict, scale: float = 100.0) -> str:
    """``mean ± std`` of a ``study.mean_std`` dict, scaled (100: fractions to points)."""
    if not m["n"]:
        return "-"
    if m["n"] == 1:
        return f"{scale * m['mean']:.2f}"
    return f"{scale * m['mean']:.2f} ± {scale * m['std']:.2f}"


def device(name: str | None) -> str:
    """The device to run on: ``name``, or CUDA when available."""
    import torch

    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA device is available")
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Options of commands that evaluate a checkpoint on its data."""
    p.add_argument(
        "--data-dir",
        "--data.data_dir",
        dest="data_dir",
        help="data folder (default: the one the checkpoint was trained on)",
    )
    p.add_argument("--batch-size", type=int, help="evaluation batch size (default: the data's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")


def checkpoint_data(args: argparse.Namespace) -> tuple[Any, dict, Any]:
    """Model, info and set-up datamodule of ``--checkpoint``, with the data options applied."""
    from ssal.checkpoint import load_checkpoint
    from ssal.data.registry import datamodule_from_config

    model, info = load_checkpoint(args.checkpoint)
    overrides = {"data_dir": args.data_dir, "eval_batch_size": getattr(args, "batch_size", None)}
    return model, info, datamodule_from_config(info.get("data"), **overrides)
