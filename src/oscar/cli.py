"""The ``oscar`` command: parse arguments, call the library, print.

Exit codes: 0 success, 1 a runtime failure (bad input file, bad model, a failed file in a batch),
2 a usage error. Errors print as one line on stderr, without a traceback; ``-v`` adds logging.
Subcommands live in ``oscar.commands.*``; each module registers its parsers, and heavy imports
(torch, diffusers) happen only inside the handlers so that ``oscar --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from oscar import __version__
from oscar.errors import OscarError

COMMAND_MODULES = (
    "oscar.commands.coding",
    "oscar.commands.info",
    "oscar.commands.models",
    "oscar.commands.convert",
    "oscar.commands.training",
    "oscar.commands.evaluation",
    "oscar.commands.demo",
    "oscar.commands.bench",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults in --help and keep the description's line breaks.

    No "(default: None)" or "(default: False)" (flags, options without a value), and nothing
    added where the help text already states its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oscar",
        description="OSCAR: one-step diffusion image codec across multiple bit-rates.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"oscar {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command in sub.choices.values():  # the global flags also work after the subcommand
        add_global_flags(command)
    return parser


def add_global_flags(parser: argparse.ArgumentParser) -> None:
    """``--version`` and ``-v`` on a subcommand's parser: ``oscar compress ... -v`` works as
    ``oscar -v compress ...`` does (the two counts add up)."""
    parser.add_argument("--version", action="version", version=f"oscar {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest="verbose_after",
        help="more logging (-vv for debug); also accepted before the subcommand",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also when called from Python)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0)
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except OscarError as exc:
        print(f"oscar: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permissions: the environment, not a bug; still one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"oscar: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("oscar: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
