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
        print(f"ssal: error: {_with_configs(_one_line(e), argv)}", file=sys.stderr)
        return 2
    except argparse.ArgumentError as e:  # the config or an option does not parse
        if debug:
            raise
        text = _with_configs(_one_line(e, 400), argv)
        print(f"ssal: error: {text}; see ssal {argv[0]} --help", file=sys.stderr)
        return 2


def _one_line(e: BaseException, limit: int = 1000) -> str:
    """An error's message on one line (jsonargparse's span several and may quote a whole
    value)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_configs(message: str, argv: list[str]) -> str:
    """``message`` with the config files of the run it came from, unless it names them."""
    from ssal.lightning_cli import config_files

    configs = [str(c) for c in config_files(argv) if str(c) not in message]
    return f"{message} (config {', '.join(configs)})" if configs else message
