"""docs/cli.md lists every subcommand and option of the parser, and is current."""

from __future__ import annotations

import argparse
import importlib.util

from helpers import ROOT
from oscar.cli import build_parser


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_cli_reference", ROOT / "scripts" / "make_cli_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_lists_every_subcommand_and_option():
    text = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sections = text.split("\n## oscar ")[1:]
    by_name = {section.split("\n", 1)[0]: section for section in sections}
    assert sorted(by_name) == sorted(sub.choices)
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.help == argparse.SUPPRESS or action.dest in ("help", "version"):
                continue
            if action.dest == "verbose_after":
                assert "`-v`" in text and "`--version`" in text
                continue
            for flag in action.option_strings or [action.metavar or action.dest]:
                assert f"`{flag}" in by_name[name], (name, flag)


def test_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == _generator().render(), (
        "docs/cli.md is out of date: run python scripts/make_cli_reference.py"
    )
