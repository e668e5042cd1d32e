"""``ssal fit|validate|test``: handed to Lightning's CLI; user errors stay one line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["LIGHTNING_COMMANDS", "add_parsers", "run"]

LIGHTNING_COMMANDS = ("fit", "validate", "test")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Listed for ``ssal --help``; ``main`` hands these commands to Lightning's CLI."""
    what = {"fit": "train", "validate": "validate", "test": "test"}
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"{what[name]} from a YAML config (see ssal {name} --help)")


def run(argv: list[str], debug: bool, verbose: bool) -> int:
    """Run ``ssal fit|validate|test ...`` (``argv`` starts with the subcommand)."""
    from ssal.cli.common import USER_ERRORS, configure_output, one_line
    from ssal.lightning_cli import run_lightning_cli
    from ssal.resume import Interrupted

    configure_output(verbose)  # after Lightning is imported: it sets its loggers on import
    try:
        return run_lightning_cli(argv)
    except USER_ERRORS as e:
        if debug:
            raise
        located = getattr(e, "located", False)  # the line says where the value came from
        message = one_line(e) if located else _with_configs(one_line(e), argv)
        print(f"ssal: error: {message}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"ssal: {e}", file=sys.stderr)
        return 130


def _names_its_file(message: str) -> bool:
    """Whether ``message`` starts with the path of an existing file or folder (``PATH: ...``),
    as the errors of ssal's readers do."""
    head, colon, _ = message.partition(":")
    try:
        return bool(colon) and len(head) < 4096 and Path(head).exists()
    except (OSError, ValueError):  # names too long, NUL bytes
        return False


def _with_configs(message: str, argv: list[str]) -> str:
    """``message`` with the config files of the run it came from, unless it names them or
    the file it is about."""
    from ssal.config_files import config_files

    if _names_its_file(message):
        return message
    configs = [str(c) for c in config_files(argv) if str(c) not in message]
    return f"{message} (config {', '.join(configs)})" if configs else message
