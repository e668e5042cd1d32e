"""What every ``ssal`` subcommand shares: one-line errors, the console, progress, formats."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ssal.errors import PATH_ERRORS, UserError

__all__ = [
    "USER_ERRORS",
    "Parser",
    "report_bug",
    "add_data_args",
    "checkpoint_data",
    "configure_output",
    "console",
    "device",
    "mean_std",
    "one_line",
    "pct",
    "say",
    "show_table",
    "track",
    "warn",
]


USER_ERRORS = (UserError, *PATH_ERRORS)
"""What ends a command with one ``ssal: error:`` line (exit code 2) instead of a traceback:
ssal's ``UserError`` (``ConfigError`` included), and the OS errors about a path the user named.
Anything else is a bug: its traceback, a line saying so, exit code 1 (``report_bug``)."""


class HelpFormatter(argparse.HelpFormatter):
    """Help with each option's default (where it has one and its text does not say it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not text
            or any(default is x for x in (None, False, argparse.SUPPRESS))
        ):
            return text
        if isinstance(default, list | tuple):
            default = " ".join(str(d) for d in default)
        return f"{text} (default: {default})"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and defaults in the help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, no usage dump
        raise UserError(f"{self.prog}: {message} (see --help)")


def configure_output(verbose: bool = False) -> None:
    """What a command prints: ssal's own lines (``ssal: ...`` on stderr) and, unless
    ``verbose``, no library warnings, start-up lines, tips or summaries.

    ssal logs its notes at ``ssal.callbacks.NOTE`` (between INFO and WARNING); the libraries'
    INFO records (Lightning's start-up lines and tips) are switched off below that.
    """
    ours = logging.getLogger("ssal")
    ours.handlers = [logging.StreamHandler(sys.stderr)]
    ours.handlers[0].setFormatter(logging.Formatter("ssal: %(message)s"))
    ours.setLevel(logging.INFO)
    ours.propagate = False
    if not verbose:
        logging.disable(logging.INFO)
        warnings.simplefilter("ignore")
        # a download without network retries with a warning line each; ssal's error says it
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def say(message: str) -> None:
    """One line of ssal's own on stderr (files written, what happens)."""
    print(f"ssal: {message}", file=sys.stderr)


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"ssal: warning: {message}", file=sys.stderr)


def console(stderr: bool = False) -> Any:
    """A rich console (imported lazily: ``ssal --help`` stays fast)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def track(enabled: bool = True) -> Any:
    """A progress bar on stderr for evaluation loops (``ssal.evaluate.Track``), or none."""

    def wrap(iterable: Iterable, description: str, total: int | None) -> Iterator:
        if not enabled or not sys.stderr.isatty():  # no bar in logs and pipes
            yield from iterable
            return
        from rich.progress import Progress

        with Progress(transient=True, console=console(stderr=True)) as bar:
            task = bar.add_task(description, total=total)
            for item in iterable:
                yield item
                bar.advance(task)

    return wrap


def one_line(error: BaseException) -> str:
    """An error's message on one line (what ``ssal: error:`` prints)."""
    from ssal.files import squeeze

    return squeeze(error) or type(error).__name__


def report_bug(error: BaseException, argv: Sequence[str]) -> int:
    """Print the traceback of an error no user can cause, then one line that says it is a bug
    and what a report needs (the command and ssal's version); returns exit code 1."""
    import shlex
    import traceback

    from ssal import __version__

    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    command = " ".join(shlex.quote(a) for a in ["ssal", *argv])
    print(
        f"ssal: error: this is a bug in ssal {__version__} ({type(error).__name__}), not a "
        f"mistake of yours; please report it with the command ({command}) and the traceback "
        "above",
        file=sys.stderr,
    )
    return 1


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
        metavar="DIR",
        help="data folder (default: the one the checkpoint was trained on)",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="evaluation batch size (default: the data's)"
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")


def checkpoint_data(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Model, card and set-up datamodule of ``--checkpoint``, with the data options applied."""
    from ssal.checkpoint import load_checkpoint

    model, card = load_checkpoint(args.checkpoint)
    return model, card, card_data(args)(card)


def card_data(args: argparse.Namespace) -> Any:
    """The rebuilder of a card's set-up datamodule with the data options (``--data-dir``,
    ``--batch-size``) applied; cards of the same data share one."""
    from ssal.data.registry import datamodule_rebuilder

    return datamodule_rebuilder(
        data_dir=args.data_dir, eval_batch_size=getattr(args, "batch_size", None)
    )


SECTION = None  # a row of ``show_table`` that ends a section (a rule in the terminal)


def show_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[str] | None],
    right: Sequence[str] = (),
) -> None:
    """A table on stdout: drawn to fit the terminal (cells wrap, never cut), or, when stdout
    is not a terminal (piped, redirected), plain tab-separated lines under ``# title``.

    Cells may hold rich markup (``[red]no[/red]``); ``None`` rows end a section.
    """
    from rich.table import Table
    from rich.text import Text

    out = console()
    if not out.is_terminal:
        print(f"# {title}")
        print("\t".join(columns))
        for row in rows:
            if row is not None:
                print("\t".join(Text.from_markup(str(c)).plain for c in row))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", overflow="fold")
    for row in rows:
        if row is None:
            if table.rows:
                table.rows[-1].end_section = True
        else:
            table.add_row(*(str(c) for c in row))
    out.print(table)
