"""``ssal fit|validate|test``: handed to Lightning's CLI; user errors stay one line."""

from __future__ import annotations

import argparse
import sys

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
    from ssal.lightning_cli import Interrupted, run_lightning_cli

    configure_output(verbose)  # after Lightning is imported: it sets its loggers on import
    try:
        return run_lightning_cli(argv)
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"ssal: error: {_with_configs(one_line(e), argv)}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"ssal: interrupted; resume with: {e}", file=sys.stderr)
        return 130


def _with_configs(message: str, argv: list[str]) -> str:
    """``message`` with the config files of the run it came from, unless it names them or
    starts with the file it is about (``corrupt.ckpt: not a loadable checkpoint``)."""
    from pathlib import Path

    from ssal.lightning_cli import config_files

    head = message.split(": ", 1)[0]
    if head != message and len(head) < 4096 and Path(head).exists():
        return message
    configs = [str(c) for c in config_files(argv) if str(c) not in message]
    return f"{message} (config {', '.join(configs)})" if configs else message
