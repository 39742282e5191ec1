"""Option types and parsers that several commands share."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def key_value_options(settings: list[str], option: str) -> dict:
    """`KEY=VALUE` words (lm-eval's syntax: a value with commas in brackets) as a dict; `option` names the flag in
    the error."""
    from lm_eval._cli.utils import key_val_to_dict

    from moe_rbench_models.errors import OptionError

    options = {}
    for setting in settings:
        try:
            options |= key_val_to_dict(setting)
        except ValueError as error:
            raise OptionError(
                f"{option} {setting!r}: {error}; a value with commas goes in brackets, e.g. refusal_actions=[0,4]"
            ) from None
    return options


def add_old_spelling(parser: argparse.ArgumentParser, old: str, documented: argparse.Action) -> None:
    """Accept `old`, an earlier release's spelling of the `documented` option, for the same value; --help lists
    only the documented one."""
    hidden = {"dest": documented.dest, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
    if documented.nargs == 0:  # a switch (store_true)
        parser.add_argument(old, action="store_const", const=documented.const, **hidden)
    else:
        parser.add_argument(old, type=documented.type, nargs=documented.nargs, metavar=documented.metavar, **hidden)
