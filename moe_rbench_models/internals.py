"""The library internals `moe_hf` relies on, checked where they are used.

`moe_hf` overrides a few HFLM methods and reads what `generate` hands the model (its KV cache, the hidden
states it asks for). A new lm-eval or transformers release can change these without notice: transformers 5.24
renamed the cache argument from `past_key_values` to `cache`, and a weak SCMoE pass that looked it up by the
old name silently shared generate's cache. Every such assumption is checked here, at the point of use, and a
mismatch stops the run with `InternalsChanged` (naming the library and version) rather than giving wrong
numbers. The equivalence tests (`pytest -m equivalence`, run against the newest releases in CI) cover what a
check cannot see.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

from transformers.cache_utils import Cache

from moe_rbench_models.errors import MoERBenchError

# HFLM methods `moe_hf` overrides or calls, with the parameters it relies on (lm-eval 0.4.13)
HFLM_METHODS = {
    "_model_call": ("self", "inps", "attn_mask", "labels"),
    "_select_cont_toks": ("self", "logits", "contlen", "inplen"),
    "_model_generate": ("self", "context", "max_length", "stop", "generation_kwargs"),
    "_loglikelihood_tokens": ("self", "requests", "disable_tqdm", "override_bs"),
    "tok_batch_encode": ("self", "strings", "padding_side", "left_truncate_len", "truncation"),
    "loglikelihood": ("self", "requests", "disable_tqdm"),
    "loglikelihood_rolling": ("self", "requests", "disable_tqdm"),
    "generate_until": ("self", "requests", "disable_tqdm"),
    "set_cache_hook": ("self", "cache_hook"),
}


class InternalsChanged(MoERBenchError, RuntimeError):
    """A library no longer works the way `moe_hf` relies on; continuing would give wrong numbers."""

    def __init__(self, library: str, what: str) -> None:
        super().__init__(
            f"{library} {version(library)}: {what}. moe-rbench was not written for this behaviour and stops rather "
            "than report numbers it cannot vouch for; install the versions it is tested with (README, 'Tested with') "
            "or report this at the project's issue tracker."
        )


def check_hflm(hflm_class: type) -> None:
    """HFLM still has the methods and parameters `moe_hf` overrides."""
    check_methods(hflm_class, HFLM_METHODS, "HFLM")


def check_methods(cls: type, methods: dict[str, tuple[str, ...]], label: str) -> None:
    """lm-eval's class `cls` still has `methods` with these parameters (InternalsChanged otherwise)."""
    for name, expected in methods.items():
        method = getattr(cls, name, None)
        found = tuple(inspect.signature(method).parameters) if method is not None else None
        if found != expected:
            raise InternalsChanged("lm_eval", f"{label}.{name} has parameters {found}, expected {expected}")


def find_cache(args: tuple, kwargs: dict) -> tuple[str | int | None, Cache | None]:
    """Where a forward call got its KV cache (a keyword name or a position) and the cache; (None, None) if
    it got none. Found by type, whatever transformers calls the argument."""
    found = [(name, value) for name, value in kwargs.items() if isinstance(value, Cache)]
    found += [(index, value) for index, value in enumerate(args) if isinstance(value, Cache)]
    if len(found) > 1:
        raise InternalsChanged("transformers", f"a forward call got several KV caches ({[w for w, _ in found]})")
    return found[0] if found else (None, None)


def with_cache(args: tuple, kwargs: dict, where: str | int, cache: Cache | None) -> tuple[tuple, dict]:
    """The call's arguments with the cache at `where` (from `find_cache`) replaced."""
    if isinstance(where, int):
        return (*args[:where], cache, *args[where + 1 :]), kwargs
    return args, {**kwargs, where: cache}


def cache_length(cache: Cache) -> int:
    return int(cache.get_seq_length())
