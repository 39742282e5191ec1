"""Contrastive decoding in `moe_hf`: DoLa (early-exit contrast) and SCMoE (strong vs weak routing),
for loglikelihood scoring and `generate_until`. Options: options.py; scores: contrast.py; hooks: runtime.py.
"""

from __future__ import annotations

from torch import nn

from moe_rbench_models.decoding.head import OutputHead, OutputHeadError, locate_output_head
from moe_rbench_models.decoding.options import DolaOptions, SelfContrastOptions, candidate_layers, read_dola_layers
from moe_rbench_models.decoding.runtime import ContrastiveDecoding, DoLa, SelfContrast
from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing.discovery import MoELayer, require_moe
from moe_rbench_models.routing.interventions import plan_interventions

__all__ = [
    "ContrastiveDecoding",
    "DoLa",
    "DolaOptions",
    "OutputHead",
    "OutputHeadError",
    "SelfContrast",
    "SelfContrastOptions",
    "build_contrastive_decoding",
    "candidate_layers",
    "locate_output_head",
    "read_dola_layers",
]


def build_contrastive_decoding(
    model: nn.Module,
    backend: str,
    moe_layers: list[MoELayer],
    options: DolaOptions | SelfContrastOptions | None,
    routing_hooks=None,
) -> ContrastiveDecoding | None:
    """The method the `dola_*` / `scmoe_*` model arguments ask for (`MoEOptions.decoding`; None: neither), installed
    on `model`."""
    if options is None:
        return None
    method = "DoLa" if isinstance(options, DolaOptions) else "SCMoE"
    if backend != "causal":
        raise OptionError(
            f"{method} is implemented for decoder-only (causal) models; {type(model).__name__} is an "
            "encoder-decoder model."
        )
    if isinstance(options, DolaOptions):
        head = locate_output_head(model, options.final_norm, "DoLa")
        tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
        return DoLa(model, head, options, candidate_layers(options.layers, head.num_layers, tied))
    require_moe(moe_layers, "scmoe_beta", model)
    try:
        plan_interventions(moe_layers, top_k=options.weak_k)  # the weak routing must be possible in every layer
    except ValueError as error:
        raise OptionError(
            f"SCMoE needs weak routing with scmoe_weak_k={options.weak_k} experts per token: {error}"
        ) from None
    strong_k = {layer.key: getattr(layer.top_k_owner, layer.top_k_attribute) for layer in moe_layers}
    not_weaker = {key: k for key, k in strong_k.items() if options.weak_k >= k}
    if not_weaker:
        raise OptionError(
            f"scmoe_weak_k={options.weak_k} is not weaker than the model's own routing (top-k "
            f"{sorted(set(not_weaker.values()))} in layers {', '.join(not_weaker)}): the two passes would "
            "be the same and SCMoE would return the plain scores. Choose scmoe_weak_k below the top-k."
        )
    plan = routing_hooks.plan if routing_hooks is not None else {}
    too_many = {key: sorted(change.forced) for key, change in plan.items() if len(change.forced) > options.weak_k}
    if too_many:
        raise OptionError(
            f"force_experts forces {too_many} but SCMoE's weak pass routes each token to scmoe_weak_k={options.weak_k} "
            "experts: force at most that many per layer, or raise scmoe_weak_k"
        )
    head = locate_output_head(model, False, "SCMoE")
    return SelfContrast(model, head, options, moe_layers, routing_hooks)
