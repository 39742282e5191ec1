"""How a model argument of `moe_hf` is written, read the same way for every argument (as lm-eval hands them over:
strings, numbers, booleans or lists): comma-separated items (`dola_layers="16,18,20"`, `label_map="0,1,2"`, expert
ids), per-layer specs (`top_k="12:2;13:1"`, `disable_experts="*:3,7"`), yes/no switches (`routing_overwrite=true`),
numbers and one of a few words. Which argument takes which is decided in options.py (`MoEOptions`).

lm-eval turns only `true`/`false` into booleans; any other word reaches the model as a string, which Python reads as
true (`routing_overwrite=no` would overwrite). `parse_bool` takes the usual spellings and refuses the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from typing import Any

from moe_rbench_models.errors import OptionError


def parse_items(
    spec: Any, option: str, item: Callable[[str], Any] = str, expected: str = "values such as '1,2,3'"
) -> list:
    """`"a,b,c"`, a list/tuple, or one number, as a non-empty list of `item(text)`; `expected` says what is
    accepted, for the error."""
    parts = [spec] if isinstance(spec, int) else list(spec) if isinstance(spec, (list, tuple)) else str(spec).split(",")
    texts = [str(part).strip() for part in parts]
    if not texts or not all(texts):
        raise OptionError(f"{option}: expected {expected}, got {spec!r}")
    items = []
    for text in texts:
        try:
            items.append(item(text))
        except ValueError:
            kind = "an integer" if item is int else "valid"
            raise OptionError(f"{option}: {text!r} is not {kind}; expected {expected}, got {spec!r}") from None
    return items


BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def parse_bool(value: Any, option: str) -> bool:
    """A switch as a real bool: a bool, 1/0, or (any case) true/false, 1/0, yes/no; an OptionError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[value.strip().lower()]
    raise OptionError(f"{option}: expected true or false (also 1/0 or yes/no, any case), got {value!r}")


def parse_layer_spec(spec: Any, option: str) -> list[tuple[str, str]]:
    """`"LAYER:VALUE;LAYER:VALUE"` (LAYER a block index, `encoder.N` / `decoder.N` or `*`), a dict, or one number
    (all layers), as (layer, value) text pairs."""
    if isinstance(spec, dict):
        return [(str(layer), str(value)) for layer, value in spec.items()]
    if isinstance(spec, int):
        return [("*", str(spec))]
    pairs = []
    for part in str(spec).split(";"):
        layer, colon, value = part.partition(":")
        if not colon or not layer.strip() or not value.strip():
            raise OptionError(
                f"{option}: expected 'LAYER:VALUE' parts separated by ';' (e.g. '*:3,7' or '12:5;13:0'), got {part!r}"
            )
        pairs.append((layer.strip(), value.strip()))
    return pairs


@dataclass(frozen=True)
class LayerSpec:
    """A per-layer model argument, read: `parts` are (layer, integers) pairs; `given` is the value as written, which
    the results and the routing records report."""

    given: Any
    parts: tuple[tuple[str, tuple[int, ...]], ...]


def read_layer_spec(spec: Any, option: str, expected: str, one_value: bool = False) -> LayerSpec:
    """`"LAYER:1,2;LAYER:3"` (see parse_layer_spec) with integer values; `one_value`: exactly one per layer."""
    if isinstance(spec, LayerSpec):
        return spec
    parts = []
    for layer, value in parse_layer_spec(spec, option):
        values = tuple(parse_items(value, option, int, expected=expected))
        if one_value and len(values) != 1:
            raise OptionError(f"{option}: expected {expected} per layer, got {value!r} in {spec!r}")
        parts.append((layer, values))
    return LayerSpec(spec, tuple(parts))


def read_choice(value: Any, option: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise OptionError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return value


def read_number(value: Any, option: str) -> float:
    """A number (lm-eval hands `0.5` over as a float; Python callers may pass `"0.5"`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        return float(str(value).strip())
    except ValueError:
        raise OptionError(f"{option}: expected a number such as 0.5, got {value!r}") from None


def read_integer(value: Any, option: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if isinstance(value, bool) or not text.lstrip("-").isdigit():
        raise OptionError(f"{option}: expected a whole number such as 2, got {value!r}")
    return int(text)


def read_path(value: Any, option: str) -> str:
    """A directory or file name (not checked for existence: each user of the option says what it needs there)."""
    if not isinstance(value, (str, PathLike)) or not str(value).strip():
        raise OptionError(f"{option}: expected a path such as out/, got {value!r}")
    return str(value)
