"""The vLLM worker tests: run in the vLLM environment, `make test-vllm` (which builds it, .venv-vllm, with
`make vllm-setup`). Not part of tests/: the main suite's environment has no vLLM.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

if importlib.util.find_spec("vllm") is None:
    raise ImportError("tests_vllm runs in the vLLM environment, where vllm is installed: `make test-vllm` builds it")

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
