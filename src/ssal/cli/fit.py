"""``ssal fit|validate|test``: handed to Lightning's CLI; user errors stay one line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["LIGHTNING_COMMANDS", "add_parsers", "run"]

LIGHTNING_COMMANDS = ("fit", "validate", "test")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Listed for ``ssal --help``; ``main`` hands these commands to Lightning's CLI."""
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"{name} with a YAML config (Lightning CLI; see ssal {name} -h)")


def run(argv: list[str], debug: bool) -> int:
    """Run ``ssal fit|validate|test ...`` (``argv`` starts with the subcommand)."""
    from ssal.lightning_cli import run_lightning_cli

    argv = [a for a in argv if a != "--debug"]
    try:
        return run_lightning_cli(argv)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        if debug:
            raise
        print(f"ssal: error: {e}", file=sys.stderr)
        return 2
