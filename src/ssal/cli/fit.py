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


def _command_line_values(argv: list[str]) -> list[tuple[str, str]]:
    """The ``--key value`` and ``--key=value`` pairs of ``argv`` other than ``--config``."""
    pairs = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg in ("--config", "--print_config"):
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
        if key and key != "config":
            pairs.append((key, value))
    return pairs


def _about_command_line(message: str, argv: list[str]) -> bool:
    """Whether ``message`` is about a value given on the command line: it names the option's
    last part (``batch_size``) or quotes its value (a path, a name)."""
    return any(
        key.rsplit(".", 1)[-1] in message or (len(value) >= 3 and value in message)
        for key, value in _command_line_values(argv)
    )


def _with_configs(message: str, argv: list[str]) -> str:
    """``message`` with where its value came from: the command line, where it is about a
    value given there, or else the config files of the run, unless it names them or the file
    it is about."""
    from ssal.config_files import config_files

    if _names_its_file(message):
        return message
    if _about_command_line(message, argv):
        return message if "on the command line" in message else f"{message} (on the command line)"
    configs = [str(c) for c in config_files(argv) if str(c) not in message]
    return f"{message} (config {', '.join(configs)})" if configs else message
