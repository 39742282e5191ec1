"""The `moe-rbench` command line: one module per command, one flag style, the old spellings still accepted."""

from __future__ import annotations

import argparse
import re

import pytest

from moe_rbench.cli import build_parser, main
from moe_rbench.commands import COMMANDS


@pytest.mark.parametrize("command", [module.NAME for module in COMMANDS if module.NAME != "run"])
def test_every_command_has_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: moe-rbench {command} [-h]")


def test_the_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(module.NAME in listed for module in COMMANDS)


def test_flags_are_snake_case_and_the_kebab_case_spellings_of_compare_still_work():
    for command in COMMANDS:
        usage = command.add_parser(argparse.ArgumentParser().add_subparsers()).format_usage()
        assert not [flag for flag in re.findall(r"--[\w-]+", usage) if "-" in flag[2:]], usage
    parser = build_parser()
    required = ["compare", "--baseline", "a", "--candidate", "b"]
    old = parser.parse_args([*required, "--max-drop", "0.2", "--allow-missing", "--ignore-within-stderr"])
    new = parser.parse_args([*required, "--max_drop", "0.2", "--allow_missing", "--ignore_within_stderr"])
    assert vars(old) == vars(new)
    assert (old.max_drop, old.allow_missing, old.ignore_within_stderr) == (0.2, True, True)
    default = parser.parse_args(required)
    assert (default.max_drop, default.allow_missing, default.ignore_within_stderr) == (0.01, False, False)
