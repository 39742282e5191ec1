"""The `moe_hf` lm-eval model: a Hugging Face LM with MoE routing exposed.

`from moe_rbench_models import MoEHFLM` imports lm-eval and torch on first use only, so that light
modules of this package (e.g. `tiny`) stay cheap to import.
"""

from __future__ import annotations

__all__ = ["MoEHFLM"]


def __getattr__(name: str):
    if name == "MoEHFLM":
        from moe_rbench_models.moe_hf import MoEHFLM

        return MoEHFLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
