"""`MoERoutingExtension`: the vLLM worker extension that captures routing and applies interventions per request.

    llm = LLM(model, worker_extension_cls="moe_rbench_models.vllm.worker.MoERoutingExtension",
              enforce_eager=True, enable_prefix_caching=False)
    layers = llm.collective_rpc("moe_install")[0]       # one description per MoE layer
    llm.generate(prompts, [SamplingParams(..., extra_args={"moe_rbench": {...}})])  # settings.py
    routing = llm.collective_rpc("moe_fetch", args=(tags,))[0]

Two vLLM internals are wrapped, no file is patched: each MoE layer's `FusedMoERouter.select_experts`
(vllm/model_executor/layers/fused_moe/router/fused_moe_router.py), found through the `MoERunner` modules
(vllm/model_executor/layers/fused_moe/runner/moe_runner.py), and the model runner's `_model_forward`
(vllm/v1/worker/gpu_model_runner.py), which marks a step: the step's flattened tokens are mapped to requests by
`input_batch.req_ids` and `query_start_loc` and to positions by the `positions` it is called with. checks.py
checks all of this at install.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from moe_rbench_models.errors import OptionError
from moe_rbench_models.vllm.checks import (
    LayerInfo,
    VLLMInternalsChanged,
    check_model_runner,
    check_vllm_config,
    layer_info,
    moe_runner_class,
)
from moe_rbench_models.vllm.routing import limited_weights, sorted_by_weight, steered_logits, to_host
from moe_rbench_models.vllm.settings import LayerEdit, RequestSettings, read_settings


@dataclass
class CapturedChunk:
    """One step's routing of one request: its positions `[n]` and, per layer index, ids and weights `[n, k]`."""

    positions: np.ndarray
    ids: dict[int, np.ndarray]
    weights: dict[int, np.ndarray]


@dataclass
class Step:
    """What one forward pass does to routing: the requests' token rows, their edits per layer, the top-k limit
    per token and layer, and the routing captured so far."""

    num_tokens: int
    positions: np.ndarray
    edits: dict[int, list[tuple[slice, LayerEdit]]] = field(default_factory=lambda: defaultdict(list))
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    captures: list[tuple[str, slice, RequestSettings]] = field(default_factory=list)
    routed: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def add_request(self, rows: slice, settings: RequestSettings) -> None:
        for index, edit in settings.edits.items():
            if edit.edits_logits:
                self.edits[index].append((rows, edit))
            if edit.top_k is not None:
                self.kept.setdefault(index, torch.zeros(self.num_tokens, dtype=torch.long))[rows] = edit.top_k
        if settings.capture:
            self.captures.append((settings.tag, rows, settings))


class MoERoutingExtension:
    """Mixed into vLLM's Worker class by `worker_extension_cls`; `self.model_runner` and `self.vllm_config` are the
    Worker's (vllm/v1/worker/gpu_worker.py, cpu_worker.py). Methods are called with `llm.collective_rpc(name)`."""

    def moe_install(self) -> list[dict]:
        """Check vLLM, wrap every MoE layer's router and the model forward; one description per MoE layer."""
        if getattr(self, "_moe_layers", None) is not None:
            raise OptionError("moe_install was already called on this LLM; call it once after creating the LLM")
        check_vllm_config(self.vllm_config)
        runner = self.model_runner
        check_model_runner(runner)
        moe_runners = [module for module in runner.get_model().modules() if isinstance(module, moe_runner_class())]
        if not moe_runners:
            raise VLLMInternalsChanged(
                f"{type(runner.get_model()).__name__} has no MoERunner module; the extension finds MoE layers by it"
            )
        layers = [layer_info(module) for module in moe_runners]
        if len({layer.index for layer in layers}) != len(layers):
            raise VLLMInternalsChanged(f"two MoE layers share a decoder layer index: {[x.name for x in layers]}")
        self._moe_layers = {layer.index: layer for layer in sorted(layers, key=lambda x: x.index)}
        self._moe_step: Step | None = None
        self._moe_store: dict[str, list[CapturedChunk]] = defaultdict(list)
        self._moe_tag_owner: dict[str, str] = {}
        self._moe_settings: dict[str, tuple[object, RequestSettings | None]] = {}  # by request id
        for module, layer in zip(moe_runners, layers, strict=True):
            module.router.select_experts = self._moe_routing_wrapper(layer, module.router.select_experts)
        runner._model_forward = self._moe_forward_wrapper(runner._model_forward)
        return [layer.describe() for layer in self._moe_layers.values()]

    def moe_check(self, extra_args: dict) -> None:
        """Raise OptionError if `extra_args` (a request's SamplingParams.extra_args) would be refused at run time;
        call it before submitting requests: a refusal inside a step stops vLLM's engine."""
        read_settings(extra_args, self._installed_layers())

    def moe_fetch(self, tags: list[str]) -> dict[str, dict]:
        """The routing captured under each tag (and forgotten here): `positions` (sorted, the last computation of
        each position where a request was preempted and recomputed), `layers` (decoder layer indices) and, per
        layer in that order, `ids` and `weights` `[positions][k]`, highest weight first; plain lists (vLLM's RPC
        does not carry numpy arrays). A tag with nothing captured is an error."""
        layers = self._installed_layers()
        missing = [tag for tag in tags if tag not in self._moe_store]
        if missing:
            raise OptionError(
                f"moe_fetch: nothing was captured under {missing} (already fetched, misspelt, or requested without "
                f"'capture': true); captured and not yet fetched: {sorted(self._moe_store)[:20]}"
            )
        return {tag: self._moe_fetch_one(tag, list(layers)) for tag in tags}

    # -- the step ------------------------------------------------------------------------------------------

    def _installed_layers(self) -> dict[int, LayerInfo]:
        layers = getattr(self, "_moe_layers", None)
        if layers is None:
            raise OptionError("the MoE worker extension is not installed: call llm.collective_rpc('moe_install')")
        return layers

    def _moe_forward_wrapper(self, original):
        """GPUModelRunner._model_forward (vllm/v1/worker/gpu_model_runner.py) wrapped to mark one step."""

        def model_forward(input_ids=None, positions=None, intermediate_tensors=None, inputs_embeds=None, **kwargs):
            self._moe_step = self._moe_begin_step(positions)
            try:
                output = original(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
                self._moe_end_step()
            finally:
                self._moe_step = None
            return output

        return model_forward

    def _moe_begin_step(self, positions: torch.Tensor | None) -> Step | None:
        """The step's requests with MoE settings, their token rows and positions (None: no such request)."""
        runner = self.model_runner
        num_reqs = runner.input_batch.num_reqs
        if num_reqs == 0:
            return None
        starts = runner.query_start_loc.cpu[: num_reqs + 1].numpy().astype(np.int64)
        settings = [self._request_settings(req_id) for req_id in runner.input_batch.req_ids[:num_reqs]]
        if not any(settings):
            return None
        if positions is None or positions.dim() != 1 or positions.shape[0] < starts[-1]:
            raise VLLMInternalsChanged(
                f"_model_forward got positions {None if positions is None else tuple(positions.shape)} for "
                f"{starts[-1]} scheduled tokens; the extension needs one position per token (no M-RoPE)"
            )
        step = Step(int(starts[-1]), positions[: starts[-1]].cpu().numpy().astype(np.int64))
        tags = {}
        for i, (req_id, request) in enumerate(zip(runner.input_batch.req_ids[:num_reqs], settings, strict=True)):
            if request is None or starts[i + 1] == starts[i]:
                continue
            if request.capture:
                self._claim_tag(request.tag, req_id, tags)
            step.add_request(slice(int(starts[i]), int(starts[i + 1])), request)
        return step

    def _request_settings(self, req_id: str) -> RequestSettings | None:
        """A request's settings from its SamplingParams.extra_args (CachedRequestState, vllm/v1/worker/
        gpu_input_batch.py), read once per request; OptionError for settings that name unknown layers or experts."""
        requests = self.model_runner.requests
        state = requests.get(req_id)
        if state is None:
            raise VLLMInternalsChanged(f"request {req_id} of the input batch is not in the model runner's requests")
        sampling = getattr(state, "sampling_params", None)
        cached = self._moe_settings.get(req_id)
        if cached is not None and cached[0] is sampling:
            return cached[1]
        if len(self._moe_settings) > 2 * len(requests) + 64:  # forget finished requests
            self._moe_settings = {key: value for key, value in self._moe_settings.items() if key in requests}
        settings = read_settings(getattr(sampling, "extra_args", None), self._moe_layers)
        self._moe_settings[req_id] = (sampling, settings)
        return settings

    def _claim_tag(self, tag: str, req_id: str, in_step: dict[str, str]) -> None:
        owner = self._moe_tag_owner.setdefault(tag, req_id)
        if owner != req_id or in_step.setdefault(tag, req_id) != req_id:
            raise OptionError(
                f"capture tag {tag!r} is used by requests {owner} and {req_id} (n>1 sampling, or a tag reused before "
                "moe_fetch): give every captured request its own tag"
            )

    def _moe_end_step(self) -> None:
        """File the step's captured routing per tag; every MoE layer must have routed the step's tokens."""
        step = self._moe_step
        if step is None or not step.captures:
            return
        missing = [index for index in self._moe_layers if index not in step.routed]
        if missing:
            raise VLLMInternalsChanged(
                f"MoE layers {missing} routed no tokens in a step with captured requests; their select_experts was "
                "not called through the wrapper (compiled, or another routing path)"
            )
        routed = to_host(step.routed)  # fresh arrays of this step: the chunks hold views of them
        for tag, rows, settings in step.captures:
            kept = settings.kept
            ids = {index: routed[index][0][rows, : kept[index]] for index in self._moe_layers}
            weights = {index: routed[index][1][rows, : kept[index]] for index in self._moe_layers}
            self._moe_store[tag].append(CapturedChunk(step.positions[rows], ids, weights))

    # -- the router ----------------------------------------------------------------------------------------

    def _moe_routing_wrapper(self, layer: LayerInfo, original):
        """FusedMoERouter.select_experts (vllm/model_executor/layers/fused_moe/router/fused_moe_router.py)
        wrapped: the step's edits applied to the router logits, top-k limits to the weights, routing captured."""

        def select_experts(hidden_states, router_logits, topk_indices_dtype=None, *, input_ids=None):
            step = self._moe_step
            if step is None:
                return original(hidden_states, router_logits, topk_indices_dtype, input_ids=input_ids)
            self._check_routing_call(layer, step, router_logits)
            n = step.num_tokens
            if layer.index in step.edits:
                router_logits = steered_logits(router_logits, step.edits[layer.index])
            weights, ids = original(hidden_states, router_logits, topk_indices_dtype, input_ids=input_ids)
            if layer.index in step.kept:
                limited = limited_weights(weights[:n], step.kept[layer.index].to(weights.device), layer.renormalize)
                weights = torch.cat([limited, weights[n:]]).contiguous()
            if step.captures:
                step.routed[layer.index] = sorted_by_weight(ids[:n], weights[:n])
            else:
                step.routed[layer.index] = None
            return weights, ids

        return select_experts

    @staticmethod
    def _check_routing_call(layer: LayerInfo, step: Step, router_logits: torch.Tensor) -> None:
        if layer.index in step.routed:
            raise VLLMInternalsChanged(
                f"the router of layer {layer.index} ({layer.name}) was called twice in one step (chunked MoE?); the "
                "extension maps one call per layer and step to the step's tokens"
            )
        if router_logits.dim() != 2 or router_logits.shape[0] < step.num_tokens:
            raise VLLMInternalsChanged(
                f"the router of layer {layer.index} got logits {tuple(router_logits.shape)} for {step.num_tokens} "
                "scheduled tokens; the extension expects [tokens (+ padding), experts]"
            )

    # -- fetching ------------------------------------------------------------------------------------------

    def _moe_fetch_one(self, tag: str, layers: list[int]) -> dict:
        chunks = self._moe_store.pop(tag)
        self._moe_tag_owner.pop(tag, None)
        positions = np.concatenate([chunk.positions for chunk in chunks])
        # the last computation of each position: its last occurrence, then sorted by position
        reversed_first = np.unique(positions[::-1], return_index=True)[1]
        rows = len(positions) - 1 - reversed_first
        return {
            "positions": positions[rows].tolist(),
            "layers": layers,
            "ids": [np.concatenate([chunk.ids[index] for chunk in chunks])[rows].tolist() for index in layers],
            "weights": [np.concatenate([chunk.weights[index] for chunk in chunks])[rows].tolist() for index in layers],
        }
