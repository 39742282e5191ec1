"""The vLLM worker tests: run in an environment with vLLM (CPU build) and the package on the path, e.g.

    PYTHONPATH=. VLLM_CPU_KVCACHE_SPACE=1 /work/vllm-probe/.venv/bin/python -m pytest -q tests_vllm

Not part of tests/: the main suite's environment has no vLLM.
"""

from __future__ import annotations

import os

import pytest

# vllm-cpu 0.32.0 installed beside the `vllm` distribution reports a version without "cpu"; name the platform
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

pytest.importorskip("vllm", reason="the tests_vllm suite needs vLLM installed")

EXTENSION = "moe_rbench_models.vllm.worker.MoERoutingExtension"
LLM_ARGS = dict(
    dtype="float32",
    enforce_eager=True,
    enable_prefix_caching=False,
    max_model_len=128,
    max_num_seqs=8,
    max_num_batched_tokens=16,  # small: long prompts are prefilled in chunks, beside other requests' decodes
    seed=0,
    worker_extension_cls=EXTENSION,
)


def make_llm(model_dir, **overrides):
    from vllm import LLM

    return LLM(model=str(model_dir), **{**LLM_ARGS, **overrides})


def close_llm(llm) -> None:
    """Stop the engine's processes now rather than at interpreter exit (one LLM at a time on a small machine)."""
    llm.llm_engine.engine_core.shutdown()
