"""The ssal command line: one module per subcommand.

Errors a user can cause end in one line on stderr and exit code 2 (``--debug`` shows the
traceback); ``fit``, ``validate`` and ``test`` are handed to Lightning's CLI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ssal.cli import (
    bench,
    data,
    demo,
    evaluate,
    export,
    fit,
    group,
    models,
    predict,
    report,
    study,
)
from ssal.cli.common import USER_ERRORS, Parser, configure_output, one_line, report_bug

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    """The ``ssal`` parser with every subcommand."""
    parser = Parser(
        prog="ssal",
        description="Self-Supervised Autogenous Learning for PyTorch: classifiers with coarse "
        "auxiliary branches and joint prediction.",
        epilog="Each command has --help. Options are --kebab-case, except for fit, validate and "
        "test, which take Lightning's config keys (--trainer.max_epochs 10, --model.optim.lr 0.05, "
        "--data.init_args.data_dir DIR).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument(
        "--verbose", action="store_true", help="also show the libraries' warnings and messages"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, metavar="COMMAND", title="commands"
    )
    models.add_parser(sub)
    fit.add_parsers(sub)
    for command in (group, evaluate, predict, report, study, export, data, bench, demo):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssal`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)
    debug, verbose = "--debug" in argv, "--verbose" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]  # anywhere on the line
    try:
        if argv and argv[0] in fit.LIGHTNING_COMMANDS:
            return fit.run(argv, debug, verbose)
        configure_output(verbose)
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"ssal: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssal: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left (``| head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # no user causes these: a bug, with its traceback
        if debug:
            raise
        return report_bug(e, given)
