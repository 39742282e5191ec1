"""`moe_vllm`: lm-eval's vLLM model with Mixture-of-Experts routing exposed, for models that outgrow transformers.

With no MoE option set it is `--model vllm`, request for request. It accepts every `vllm` model argument, and
moe_hf's routing options with moe_hf's semantics and validation (options.py, routing/interventions.py):

- `routing_out=DIR` (with `routing_overwrite`): the routing of every request, in moe_hf's record format and directory
  layout (routing/records.py), so `moe-rbench trace`, `attribute`, `steer` and `report` read it unchanged;
- `top_k`, `disable_experts` (disable_mode=reroute), `force_experts`: as moe_hf's, applied per request by the worker
  extension (vllm/worker.py); one limit is vLLM's: top_k can lower the model's k, not raise it.

Not on vLLM (refused by name, use moe_hf): `routing_logits`, `disable_mode=steermoe|drop`, DoLa, SCMoE and the
classification head.

With a MoE option the engine runs eager (`enforce_eager=True`: compiled graphs skip the routing wrappers) without
prefix caching (cached tokens are not routed again, and KV computed under an intervention would be reused). Tensor
parallel works (every rank routes all tokens; rank 0's capture is recorded); pipeline and data parallel sizes above 1
and expert parallelism are refused for now. Asking otherwise is refused by name. Records differ from moe_hf's where
the two truncate differently: lm-eval's vLLM model keeps the last max_length - 1 tokens of a loglikelihood request
(HFLM max_length + 1).

`close()` (or leaving a `with` block) publishes the routing records; lm-eval's `simple_evaluate` publishes them when
it asks for the model's info, after the evaluation.
"""

from __future__ import annotations

import copy
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.vllm_causallms import VLLM, maybe_truncate  # the truncation generate_until applies

from moe_rbench_models.errors import OptionError
from moe_rbench_models.internals import check_methods
from moe_rbench_models.options import MoEOptions, refuse_request_cache
from moe_rbench_models.routing.discovery import MoELayer, describe_moe_config
from moe_rbench_models.routing.interventions import plan_interventions
from moe_rbench_models.routing.requests import CapturedScoring
from moe_rbench_models.routing.session import describe_interventions, open_writer, published
from moe_rbench_models.specs import parse_bool
from moe_rbench_models.vllm.capture import VLLMCapture
from moe_rbench_models.vllm.engine import RoutedLLM
from moe_rbench_models.vllm.settings import KEY

EXTENSION = "moe_rbench_models.vllm.worker.MoERoutingExtension"
# the VLLM methods moe_vllm overrides or calls, with the parameters it relies on (lm-eval 0.4.13)
VLLM_METHODS = {
    "_model_generate": ("self", "requests", "generate", "sampling_params"),
    "_loglikelihood_tokens": ("self", "requests", "disable_tqdm"),
    "loglikelihood": ("self", "requests", "disable_tqdm"),
    "loglikelihood_rolling": ("self", "requests", "disable_tqdm"),
    "generate_until": ("self", "requests", "disable_tqdm"),
    "modify_gen_kwargs": ("gen_kwargs", "eos", "default_max_gen_toks"),
}
# moe_hf options vLLM cannot honour, each with why
NOT_ON_VLLM = {
    "routing_logits": "the worker captures expert ids and weights, not router logits",
    "drop_renormalize": "disable_mode=drop is not implemented in the vLLM worker",
    "head": "the classification head is a transformers model class",
}
# the engine settings capture and interventions need: (argument, value it must have, why)
ENGINE_SETTINGS = (
    ("enforce_eager", True, "compiled graphs and CUDA graphs skip the routing wrappers silently"),
    (
        "enable_prefix_caching",
        False,
        "cached prefix tokens get no routing, and KV computed under one configuration would be reused by another",
    ),
)
PARALLEL_SIZES = ("pipeline_parallel_size", "data_parallel_size")  # refused above 1 (tensor parallel works)


@register_model("moe_vllm")
class MoEVLLM(CapturedScoring, VLLM):
    def __init__(self, pretrained: str, **model_args: Any) -> None:
        """`model_args`: vllm's and moe_hf's routing options (module docstring), read and checked before the engine
        starts; `data_dir` as moe_hf's (the benchmarks' release files, read by the moe_rbench tasks)."""
        check_methods(VLLM, VLLM_METHODS, "VLLM")
        options = MoEOptions.parse(model_args)
        _refuse_unsupported(options)
        self.options, self.data_dir = options, options.data_dir
        engine_args = _engine_arguments(options)
        super().__init__(pretrained=pretrained, **engine_args)
        self.moe_layers: list[MoELayer] = []
        self.plan: dict = {}
        self._capture: VLLMCapture | None = None
        if options.moe_options:
            self._install()

    @property
    def moe_options(self) -> dict[str, Any]:
        return self.options.moe_options

    def _install(self) -> None:
        """Install the worker extension, plan the interventions as moe_hf does, and route every request through
        `RoutedLLM` with them (and the capture)."""
        llm = self.model
        self.moe_layers = [_moe_layer(described) for described in llm.collective_rpc("moe_install")[0]]
        options = self.options
        self.plan = plan_interventions(
            self.moe_layers,
            options.top_k,
            options.disable_experts,
            options.disable_mode,
            options.drop_renormalize,
            options.force_experts,
        )
        settings = _request_settings(self.plan, self.moe_layers)
        llm.collective_rpc("moe_check", args=({KEY: settings},))  # vLLM's own limits (top_k at most the model's)
        if options.routing_out:
            writer = open_writer(options, self.moe_layers, self.plan, self._describe(), self.rank, self.world_size)
            layer_keys = {layer.layer: layer.key for layer in self.moe_layers}
            self._capture = VLLMCapture(writer, layer_keys, self.max_length - 1, self.tokenizer.decode)
        self.model = RoutedLLM(llm, settings, self._capture)

    def _describe(self) -> dict[str, Any]:
        return describe_moe_config(self._config, self.moe_layers)

    def set_cache_hook(self, cache_hook) -> None:
        refuse_request_cache(cache_hook, self.moe_options, "moe_vllm")
        super().set_cache_hook(cache_hook)

    def get_model_info(self) -> dict[str, Any]:
        """The results' `config.moe` (lm-eval asks once the evaluation has finished: the records are published)."""
        if not self.moe_layers:
            return {}
        moe: dict[str, Any] = {**self._describe(), "engine": "vllm"}
        if self.plan:
            moe["interventions"] = describe_interventions(self.options, self.plan)
        if self._capture is not None:
            moe["routing"] = published(self._capture.writer)
        return {"moe": moe}

    # -- requests: loglikelihood and loglikelihood_rolling with capture are CapturedScoring's --------------------

    def _rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """The windows VLLM.loglikelihood_rolling scores, made with the same lm-eval functions and lengths."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows = get_rolling_token_windows(
            token_list=self.tok_encode(text),
            prefix_token=self.prefix_token_id,
            max_seq_len=self.max_length - 2,
            context_len=1,
        )
        return [make_disjoint_window(window) for window in windows]

    def generate_until(self, requests, disable_tqdm: bool = False):
        if self._capture is None:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        with self._capture.call():
            self._capture.expect_generation(requests, [self._submitted_prompt(request) for request in requests])
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _submitted_prompt(self, instance) -> list[int]:
        """The prompt tokens VLLM.generate_until submits for `instance`: its context encoded and truncated to leave
        room for its max_gen_toks, with the same lm-eval functions."""
        context, gen_kwargs = instance.args
        _, _, max_gen_toks = self.modify_gen_kwargs(
            copy.deepcopy(gen_kwargs), eos=None, default_max_gen_toks=self.max_gen_toks
        )
        tokens, _ = maybe_truncate(
            self.tok_encode(context),
            max_gen_toks=max_gen_toks,
            max_model_len=self.max_length,
            side=self.truncation_side,
            verbose=False,
        )
        return tokens

    def close(self) -> None:
        """Publish the routing records and shut the engine down."""
        if self._capture is not None:
            self._capture.writer.commit()
            self._capture = None

    def __enter__(self) -> MoEVLLM:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self._capture = None  # a failed evaluation publishes nothing: the earlier records stay
        self.close()


def _refuse_unsupported(options: MoEOptions) -> None:
    for name, why in NOT_ON_VLLM.items():
        default = MoEOptions.__dataclass_fields__[name].default
        if getattr(options, name) != default:
            raise OptionError(f"moe_vllm does not take {name}: {why}. Use --model moe_hf for it.")
    if options.disable_mode != "reroute":
        raise OptionError(
            f"moe_vllm disables experts with disable_mode=reroute only (got {options.disable_mode}); use --model "
            "moe_hf for disable_mode=steermoe or drop"
        )
    if options.decoding is not None:
        raise OptionError("moe_vllm does not take DoLa (dola_*) or SCMoE (scmoe_*) options; use --model moe_hf")


def _engine_arguments(options: MoEOptions) -> dict[str, Any]:
    """vllm's arguments; with a MoE option, the engine settings capture and interventions need (a contrary value
    asked for is refused) and the worker extension."""
    engine_args = dict(options.hf_arguments)
    if not options.moe_options:
        return engine_args
    for name, needed, why in ENGINE_SETTINGS:
        given = engine_args.get(name)
        if given is not None and parse_bool(given, name) != needed:
            raise OptionError(
                f"moe_vllm with {', '.join(options.moe_options)} needs {name}={needed}: {why}. Drop {name}={given}."
            )
        engine_args[name] = needed
    for name in PARALLEL_SIZES:
        if int(engine_args.get(name, 1) or 1) != 1:
            raise OptionError(
                f"moe_vllm captures and steers routing in one engine with tensor parallelism at most; "
                f"{name}={engine_args[name]} is not supported yet with {', '.join(options.moe_options)}. Use {name}=1 "
                "(tensor_parallel_size=N works), or --model vllm without them."
            )
    if engine_args.get("worker_extension_cls") not in (None, EXTENSION):
        raise OptionError(f"moe_vllm installs its own worker_extension_cls ({EXTENSION}); drop worker_extension_cls")
    engine_args["worker_extension_cls"] = EXTENSION
    return engine_args


def _moe_layer(described: dict[str, Any]) -> MoELayer:
    """A vLLM MoE layer (worker.moe_install's description) as moe_hf's `MoELayer`, so that moe_hf's planning,
    validation and record layout apply unchanged. The router lives in the engine process: `router` and `block` are
    None, and k is changed per request (`top_k_owner` names the description)."""
    return MoELayer(
        name=described["name"],
        layer=described["layer"],
        side="decoder",
        router=None,
        block=None,
        num_experts=described["num_experts"],
        top_k=described["top_k"],
        top_k_owner=described,
        top_k_attribute="top_k",
        logits_index=None,
        reads_experts_call=False,
    )


def _request_settings(plan: dict, layers: list[MoELayer]) -> dict[str, Any]:
    """moe_hf's per-layer plan as the worker's request settings (settings.py), keyed by decoder layer index."""
    index = {layer.key: layer.layer for layer in layers}
    settings: dict[str, dict] = {"top_k": {}, "force": {}, "disable": {}}
    for key, change in plan.items():
        if change.top_k is not None:
            settings["top_k"][index[key]] = change.top_k
        if change.forced:
            settings["force"][index[key]] = sorted(change.forced)
        if change.removed:
            settings["disable"][index[key]] = sorted(change.removed)
    return {name: value for name, value in settings.items() if value}
