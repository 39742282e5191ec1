"""MoE routing capture and interventions inside vLLM: the worker extension, and what `moe_vllm` builds on it.

`worker.MoERoutingExtension` is loaded by vLLM as `LLM(..., worker_extension_cls=
"moe_rbench_models.vllm.worker.MoERoutingExtension", enforce_eager=True, enable_prefix_caching=False)` and
installed with `llm.collective_rpc("moe_install")`; per-request settings travel in `SamplingParams.extra_args`
under `settings.KEY` (see settings.py), and captured routing comes back with `llm.collective_rpc("moe_fetch",
args=(tags,))`. These modules import neither transformers nor `moe_hf`: vLLM pins its own transformers.
"""
