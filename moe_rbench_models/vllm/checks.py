"""What the worker extension relies on inside vLLM, checked at install time (tested with vLLM 0.32.0).

Each check fails with `VLLMInternalsChanged` (vLLM no longer works the way the extension relies on) or
`VLLMSetupError` (an LLM setting under which routing cannot be captured or steered per request), naming vLLM's
version, what differed and the fix, rather than capturing nothing or steering the wrong tokens.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from moe_rbench_models.errors import MoERBenchError

# FusedMoERouter.select_experts (vllm/model_executor/layers/fused_moe/router/fused_moe_router.py), self not counted
SELECT_EXPERTS_PARAMETERS = ("hidden_states", "router_logits", "topk_indices_dtype", "input_ids")
# GPUModelRunner._model_forward (vllm/v1/worker/gpu_model_runner.py), self not counted
MODEL_FORWARD_PARAMETERS = ("input_ids", "positions", "intermediate_tensors", "inputs_embeds", "model_kwargs")
# routers that score experts by a plain softmax top-k (vllm/model_executor/layers/fused_moe/router/)
SUPPORTED_ROUTERS = ("CPURouter", "FusedTopKRouter")
LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def vllm_version() -> str:
    import vllm

    return getattr(vllm, "__version__", "(unknown version)")


class VLLMInternalsChanged(MoERBenchError, RuntimeError):
    """vLLM no longer works the way the worker extension relies on; continuing would give wrong routing."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"vLLM {vllm_version()}: {what}. The moe-rbench worker extension was written for vLLM 0.32.0 and stops "
            "rather than capture or steer routing it cannot vouch for; install vLLM 0.32.0 or report this at the "
            "project's issue tracker."
        )


class VLLMSetupError(MoERBenchError, ValueError):
    """An LLM setting under which the worker extension cannot capture or steer routing per request."""

    def __init__(self, what: str) -> None:
        super().__init__(f"vLLM {vllm_version()}: {what}")


@dataclass(frozen=True)
class LayerInfo:
    """One MoE layer as the worker sees it; `index` is the decoder layer index (moe_hf's `MoELayer.layer`)."""

    index: int
    name: str
    num_experts: int
    top_k: int
    renormalize: bool
    router_class: str

    def describe(self) -> dict[str, Any]:
        return {
            "layer": self.index,
            "name": self.name,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "renormalize": self.renormalize,
            "router": self.router_class,
        }


def check_vllm_config(config) -> None:
    """Refuse settings under which the wrappers would be skipped or routing would be wrong (VllmConfig,
    vllm/config/vllm.py: model_config.enforce_eager, compilation_config.mode, cache_config.enable_prefix_caching,
    parallel_config.enable_eplb and the parallel sizes, speculative_config)."""
    from vllm.config.compilation import CompilationMode

    if not config.model_config.enforce_eager or config.compilation_config.mode != CompilationMode.NONE:
        raise VLLMSetupError(
            f"torch.compile is active (enforce_eager={config.model_config.enforce_eager}, compilation mode "
            f"{config.compilation_config.mode!r}): compiled graphs skip the Python routing wrappers silently. "
            "Create the LLM with enforce_eager=True."
        )
    if config.cache_config.enable_prefix_caching:
        raise VLLMSetupError(
            "prefix caching is on: cached prefix tokens get no routing, and KV cache computed under one request's "
            "intervention would be reused by another. Create the LLM with enable_prefix_caching=False."
        )
    if config.parallel_config.enable_eplb:
        raise VLLMSetupError(
            "expert-parallel load balancing (EPLB) is on: routers return physical expert replicas, not the "
            "model's experts. Create the LLM with enable_eplb=False."
        )
    _check_single_process(config)


def _check_single_process(config) -> None:
    """Tensor parallel is supported: every rank's router sees all of a step's tokens (the gate is replicated, the
    experts are split) and applies the same per-request settings, so rank 0's capture is the run's. Pipeline and data
    parallel (several engines or stages, each seeing part of the layers or requests) and expert parallel are not."""
    parallel = config.parallel_config
    sizes = {
        "pipeline_parallel_size": parallel.pipeline_parallel_size,
        "data_parallel_size": parallel.data_parallel_size,
    }
    if any(size != 1 for size in sizes.values()) or parallel.enable_expert_parallel:
        raise VLLMSetupError(
            f"{sizes}, enable_expert_parallel={parallel.enable_expert_parallel}: the worker extension captures and "
            "steers routing with tensor parallelism only. Create the LLM with these parallel sizes 1 and without "
            "expert parallelism."
        )
    if config.speculative_config is not None:
        raise VLLMSetupError(
            "speculative decoding is on: draft tokens would be routed and captured as if they were the request's. "
            "Create the LLM without speculative_config."
        )


def check_model_runner(runner) -> None:
    """The model runner attributes the step mapping reads (GPUModelRunner, vllm/v1/worker/gpu_model_runner.py;
    InputBatch, vllm/v1/worker/gpu_input_batch.py; CpuGpuBuffer, vllm/v1/utils.py)."""
    missing = [
        name
        for name, present in {
            "input_batch": hasattr(runner, "input_batch"),
            "input_batch.req_ids": hasattr(getattr(runner, "input_batch", None), "req_ids"),
            "input_batch.num_reqs": hasattr(getattr(runner, "input_batch", None), "num_reqs"),
            "query_start_loc.cpu": hasattr(getattr(runner, "query_start_loc", None), "cpu"),
            "requests": isinstance(getattr(runner, "requests", None), dict),
            "_model_forward": callable(getattr(runner, "_model_forward", None)),
        }.items()
        if not present
    ]
    if missing:
        raise VLLMInternalsChanged(
            f"{type(runner).__name__} has no {', '.join(missing)}; the extension maps each step's tokens to "
            "requests through them"
        )
    found = tuple(inspect.signature(runner._model_forward).parameters)
    if found != MODEL_FORWARD_PARAMETERS:
        raise VLLMInternalsChanged(
            f"{type(runner).__name__}._model_forward has parameters {found}, expected {MODEL_FORWARD_PARAMETERS}"
        )


def moe_runner_class() -> type:
    """vLLM's MoERunner (vllm/model_executor/layers/fused_moe/runner/moe_runner.py)."""
    try:
        from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner
    except ImportError as error:
        raise VLLMInternalsChanged(f"MoERunner cannot be imported ({error})") from None
    return MoERunner


def layer_info(moe_runner) -> LayerInfo:
    """The checked description of one MoERunner: a softmax top-k router whose `select_experts` the extension can
    wrap, experts that go through that router (no monolithic kernel), and a decoder layer index in its name."""
    router = getattr(moe_runner, "router", None)
    name = getattr(moe_runner, "layer_name", None)
    _check_router(router, name)
    quant_method = getattr(getattr(moe_runner, "routed_experts", None), "quant_method", None)
    if getattr(quant_method, "is_monolithic", None) is not False:
        raise VLLMSetupError(
            f"{name}: the MoE kernel {type(quant_method).__name__} is monolithic (or does not say), so it routes "
            "inside the kernel and bypasses the router's select_experts. Use an unquantised model or a "
            "quantisation whose MoE kernel is modular."
        )
    indices = LAYER_INDEX.findall(name or "")
    if len(indices) != 1:
        raise VLLMInternalsChanged(f"MoE layer name {name!r} does not hold one `layers.N.` decoder layer index")
    return LayerInfo(
        int(indices[0]), name, router.global_num_experts, router.top_k, bool(router.renormalize), type(router).__name__
    )


def _check_router(router, name: str | None) -> None:
    """FusedMoERouter (vllm/model_executor/layers/fused_moe/router/fused_moe_router.py) with a plain softmax top-k
    (CPURouter in cpu_router.py, FusedTopKRouter in fused_topk_router.py)."""
    from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter

    if not isinstance(router, FusedMoERouter):
        raise VLLMInternalsChanged(f"{name}: the router {type(router).__name__} is not a FusedMoERouter")
    found = tuple(inspect.signature(router.select_experts).parameters)
    if found != SELECT_EXPERTS_PARAMETERS:
        raise VLLMInternalsChanged(
            f"{type(router).__name__}.select_experts has parameters {found}, expected {SELECT_EXPERTS_PARAMETERS}"
        )
    if type(router).__name__ not in SUPPORTED_ROUTERS or any(
        [
            getattr(router, "scoring_func", None) != "softmax",
            getattr(router, "use_grouped_topk", False),
            getattr(router, "e_score_correction_bias", None) is not None,
            getattr(router, "custom_routing_function", None) is not None,
            not isinstance(getattr(router, "renormalize", None), bool),
        ]
    ):
        raise VLLMSetupError(
            f"{name}: router {type(router).__name__} (scoring {getattr(router, 'scoring_func', None)!r}) is not a "
            f"plain softmax top-k router ({', '.join(SUPPORTED_ROUTERS)}); the extension supports Mixtral-, "
            "Qwen3-MoE- and OLMoE-style routing only. Use moe_hf for this model."
        )
    if getattr(router, "eplb_state", None) is not None:
        raise VLLMSetupError(f"{name}: the router has EPLB state (physical expert ids). Create the LLM without EPLB.")
