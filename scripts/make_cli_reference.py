"""Write docs/cli.md, the command-line reference, from the ``oscar`` argument parser.

    python scripts/make_cli_reference.py          # rewrites docs/cli.md
    python scripts/make_cli_reference.py --check  # exit 1 if docs/cli.md is out of date

tests/test_cli_reference.py checks that the file is current, so an option added to the parser
without re-running this script fails the tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oscar.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "cli.md"

INTRO = """# Command-line reference

Generated from the argument parser by `python scripts/make_cli_reference.py`; `oscar COMMAND
--help` prints the same. Every command accepts `-v` / `-vv` (more logging) and `--version`,
before or after the command name. Exit codes: 0 success, 1 failure (one line `oscar: error: …`
on stderr, no traceback; in a batch the other files are still written), 2 usage error.
Arguments, input paths, output suffixes, levels and `--bpp` are checked before the model (and
torch) load, so such mistakes answer at once.

How the options behave in depth: [choosing a rate](usage.md#choosing-a-rate), [encoder
effort](usage.md#encoder-effort---effort-n), [decoding steps](usage.md#decoding-steps---steps-n),
[large images and tiling](usage.md#large-images-tiling-and-memory),
[speed](usage.md#speed-on-cpu); `oscar eval`: [evaluation.md](evaluation.md); `oscar train`:
[training.md](training.md).
"""


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest
        return f"`{name}`" + (" …" if action.nargs in ("+", "*") else "")
    value = ""
    if action.nargs != 0:
        value = " " + (action.metavar or action.dest.upper())
    return ", ".join(f"`{flag}{value}`" for flag in action.option_strings)


def _help(action: argparse.Action) -> str:
    text = " ".join((action.help or "").replace("%%", "%").split())
    if action.choices is not None and not isinstance(action.choices, dict):
        text += f" (one of: {', '.join(map(str, action.choices))})"
    default = action.default
    if (
        action.option_strings
        and default not in (None, False, argparse.SUPPRESS)
        and action.nargs != 0
        and "default" not in text
    ):
        text += f" (default: {default})"
    return text.replace("|", "\\|")


def render() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    out = [INTRO]
    out.append("| command | what it does |\n|---|---|")
    for name in sub.choices:
        out.append(f"| [`oscar {name}`](#oscar-{name}) | {helps.get(name, '')} |")
    for name, command in sub.choices.items():
        out.append(f"\n## oscar {name}\n")
        out.append(" ".join((command.description or helps.get(name, "")).split()) + "\n")
        out.append("| argument | meaning |\n|---|---|")
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            if action.dest in ("version", "verbose_after"):
                continue  # the global flags, described once above
            out.append(f"| {_flags(action)} | {_help(action)} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is current")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run python scripts/make_cli_reference.py")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
