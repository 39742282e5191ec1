"""`moe-rbench tiny-model ARCH DIR [--set KEY=VALUE ...]`: a tiny random-weight checkpoint of a real architecture,
built offline."""

from __future__ import annotations

import argparse

NAME = "tiny-model"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from moe_rbench_models.tiny import ARCHITECTURES

    parser = subparsers.add_parser(NAME, help="write a tiny random-weight checkpoint (no download)")
    parser.add_argument("architecture", help="one of: " + ", ".join(ARCHITECTURES))
    parser.add_argument("out_dir")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config field to change, e.g. --set num_hidden_layers=4 --set initializer_range=0.3",
    )
    parser.add_argument(
        "--tokenizer", help="a tokenizer directory to use instead of the built-in one (sets the vocabulary)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from huggingface_hub.errors import StrictDataclassError

    from moe_rbench_models.errors import OptionError
    from moe_rbench_models.tiny import build_tiny_model

    overrides = _check_overrides(args.architecture, _parse_settings(args.set))
    out = Path(args.out_dir)
    existing = next(path for path in (out, *out.absolute().parents) if path.exists())
    if not existing.is_dir():  # save_pretrained would only warn, and write nothing
        where = "is a file" if existing == out else f"is inside {existing}, a file"
        raise OptionError(f"OUT_DIR {out} {where}; give a directory for the checkpoint")
    try:
        print(build_tiny_model(args.architecture, out, tokenizer=args.tokenizer, **overrides))
    except StrictDataclassError as error:  # a value the config's own check refuses
        raise OptionError(f"--set: {' '.join(str(error).split())}") from None
    except PermissionError as error:
        raise OptionError(f"OUT_DIR {out} cannot be written ({error.strerror}: {error.filename})") from None
    return 0


def _parse_settings(settings: list[str]) -> dict:
    """`--set KEY=VALUE` words as a dict; a value that is a Python literal is that value, anything else text."""
    import ast

    from moe_rbench_models.errors import OptionError

    overrides = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals:
            raise OptionError(f"--set expects KEY=VALUE (e.g. num_hidden_layers=4), got {setting!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def _check_overrides(architecture: str, overrides: dict) -> dict:
    """The --set values, each of the type of the field's value in the tiny config (a whole number where a float is
    expected is made one; a field without a value is not checked)."""
    from transformers import AutoConfig

    from moe_rbench_models.errors import OptionError
    from moe_rbench_models.tiny import ARCHITECTURES

    if architecture not in ARCHITECTURES:
        return overrides  # build_tiny_model names the architectures
    config = AutoConfig.for_model(architecture, **ARCHITECTURES[architecture])
    checked = {}
    for key, value in overrides.items():
        default = getattr(config, key, None)
        expected = None if default is None or value is None else _expected_type(default, value)
        if expected:
            raise OptionError(
                f"--set {key}={value}: {key} ({type(default).__name__}, {default!r} in the tiny {architecture}) "
                f"takes {expected}, e.g. --set {key}={default!r}"
            )
        checked[key] = float(value) if isinstance(default, float) and value is not None else value
    return checked


def _expected_type(default, value) -> str | None:
    """What `value` should be, as the field's `default` is; None when it fits."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "True or False"
    if isinstance(default, int):
        return None if number and isinstance(value, int) else "a whole number"
    if isinstance(default, float):
        return None if number else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "text"
    return None
