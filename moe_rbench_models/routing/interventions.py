"""Inference-time routing interventions: the number of active experts, and switching experts off or on.

- `top_k=K`, or per layer `top_k="LAYER:K;LAYER:K"`: the router's own `top_k` is set (read at every call).
- `disable_experts="*:3,7"` or `"12:5;13:0"` with
  - `disable_mode=reroute`: the disabled experts' router logits are masked inside the router, so every
    token picks its best enabled experts (additive selection biases, as DeepSeek-V3's, are masked too);
  - `disable_mode=drop`: routing is kept and the disabled experts' weights are zeroed; with
    `drop_renormalize=true` the remaining weights are rescaled to the original total.

LAYER is a transformer block index (`12`), `encoder.N` / `decoder.N` in encoder-decoder models, or `*`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from moe_rbench_models.routing.discovery import MoELayer
from moe_rbench_models.specs import parse_items, parse_layer_spec

DISABLE_MODES = ("reroute", "drop")


@dataclass(frozen=True)
class LayerIntervention:
    top_k: int | None = None
    disabled: frozenset[int] = frozenset()
    mode: str = "reroute"
    renormalize: bool = False
    forced: frozenset[int] = frozenset()

    @property
    def edits_logits(self) -> bool:
        return bool(self.forced) or bool(self.disabled) and self.mode == "reroute"


def resolve_layers(spec: str, layers: list[MoELayer]) -> list[MoELayer]:
    """The MoE layers a layer spec (`*`, `12`, `decoder.12`) names; clear errors otherwise."""
    spec = spec.strip()
    if spec == "*":
        return list(layers)
    matches = [layer for layer in layers if spec in (layer.key, str(layer.layer))]
    two_sides = len({layer.side for layer in layers}) > 1
    available = ", ".join(layer.key if two_sides else str(layer.layer) for layer in layers)
    if not matches:
        raise ValueError(f"Layer {spec!r} is not an MoE layer of this model; MoE layers: {available}")
    if len(matches) > 1:
        raise ValueError(f"Layer {spec!r} is ambiguous here (encoder and decoder); write one of: {available}")
    return matches


def plan_interventions(
    layers: list[MoELayer],
    top_k: str | int | dict | None = None,
    disable_experts: str | dict | None = None,
    disable_mode: str = "reroute",
    drop_renormalize: bool = False,
    force_experts: str | dict | None = None,
) -> dict[str, LayerIntervention]:
    """Validated interventions per layer key (empty when none is asked for)."""
    if disable_mode not in DISABLE_MODES:
        raise ValueError(f"disable_mode must be one of {', '.join(DISABLE_MODES)}, got {disable_mode!r}")
    if drop_renormalize and disable_mode != "drop":
        raise ValueError("drop_renormalize applies to disable_mode=drop only")
    new_k: dict[str, int] = {}
    for layer_spec, value in parse_layer_spec(top_k, "top_k") if top_k is not None else []:
        (k,) = parse_items(value, "top_k", int, expected="one number of experts per token")
        for layer in resolve_layers(layer_spec, layers):
            new_k[layer.key] = _checked_top_k(layer, k)
    disabled = _experts_per_layer(disable_experts, "disable_experts", layers)
    forced = _experts_per_layer(force_experts, "force_experts", layers)
    plan = {}
    for layer in layers:
        if layer.key not in new_k and layer.key not in disabled and layer.key not in forced:
            continue
        off, on = frozenset(disabled.get(layer.key, ())), frozenset(forced.get(layer.key, ()))
        if off & on:
            raise ValueError(
                f"layer {layer.key}: experts {sorted(off & on)} are both disabled and forced; keep each expert in one "
                "of disable_experts and force_experts"
            )
        if off and disable_mode == "drop" and layer.adapter is not None:
            raise ValueError(
                f"disable_mode=drop needs the routing a gate hands to its experts; the adapter for "
                f"{type(layer.router).__name__} only reads it. Use disable_mode=reroute."
            )
        k = new_k.get(layer.key, layer.top_k)
        if disable_mode == "reroute" and off and k is not None and layer.num_experts - len(off) < k:
            raise ValueError(
                f"disable_experts: layer {layer.key} would keep {layer.num_experts - len(off)} experts "
                f"for top-k {k}; rerouting needs at least k enabled experts"
            )
        if on and layer.adapter is not None:
            raise ValueError(
                f"force_experts needs a router whose expert scores come from a linear projection; the adapter for "
                f"{type(layer.router).__name__} only reads its gate"
            )
        if on:
            _check_forceable(layer, on, k)
        plan[layer.key] = LayerIntervention(new_k.get(layer.key), off, disable_mode, drop_renormalize, on)
    return plan


def _check_forceable(layer: MoELayer, forced: frozenset[int], k: int | None) -> None:
    router = type(layer.router).__name__
    if k is not None and len(forced) > k:
        raise ValueError(
            f"force_experts: layer {layer.key} selects {k} experts per token, so at most {k} can be forced; got "
            f"{len(forced)} ({sorted(forced)}). Force fewer, or raise top_k."
        )
    capacity = getattr(layer.router, "expert_capacity", None)
    if capacity is not None:
        raise ValueError(
            f"force_experts: {router} (layer {layer.key}) gives each expert a capacity of {capacity} tokens; a forced "
            "expert would get every token and drop those past its capacity (processed by no expert). Use "
            "disable_experts on this model."
        )
    groups, kept_groups = getattr(layer.router, "num_group", None), getattr(layer.router, "topk_group", None)
    if isinstance(groups, int) and isinstance(kept_groups, int) and groups > 0:
        spanned = sorted({expert // (layer.num_experts // groups) for expert in forced})
        if len(spanned) > kept_groups:
            raise ValueError(
                f"force_experts: {router} (layer {layer.key}) selects experts within its best {kept_groups} of "
                f"{groups} groups; the forced experts {sorted(forced)} lie in {len(spanned)} groups ({spanned}). "
                f"Force experts of at most {kept_groups} groups."
            )


def _experts_per_layer(spec: str | dict | None, option: str, layers: list[MoELayer]) -> dict[str, set[int]]:
    """`"LAYER:ids;..."` as expert ids per layer key, each checked against the layer's experts."""
    chosen: dict[str, set[int]] = {}
    for layer_spec, value in parse_layer_spec(spec, option) if spec is not None else []:
        experts = set(parse_items(value, option, int, expected="expert ids such as '*:3,7'"))
        for layer in resolve_layers(layer_spec, layers):
            bad = sorted(e for e in experts if not 0 <= e < layer.num_experts)
            if bad:
                raise ValueError(f"{option}: layer {layer.key} has experts 0-{layer.num_experts - 1}; got {bad}")
            chosen.setdefault(layer.key, set()).update(experts)
    return chosen


def _checked_top_k(layer: MoELayer, k: int) -> int:
    if layer.top_k_owner is None:
        raise ValueError(
            f"top_k cannot be changed for layer {layer.key}: {type(layer.router).__name__} routes each token to a "
            f"fixed number of experts ({layer.top_k}) by construction"
        )
    limit = top_k_limit(layer)
    if not 1 <= k <= limit:
        raise ValueError(f"top_k for layer {layer.key} must be between 1 and {limit}, got {k}")
    return k


def top_k_limit(layer: MoELayer) -> int:
    """The most experts a token of this layer can be routed to."""
    groups, kept_groups = getattr(layer.router, "num_group", None), getattr(layer.router, "topk_group", None)
    if isinstance(groups, int) and isinstance(kept_groups, int) and groups > 0:
        return kept_groups * (layer.num_experts // groups)  # grouped top-k (DeepSeek-V3) picks within kept groups
    return layer.num_experts


def set_top_k(layer: MoELayer, k: int) -> int:
    """Set the layer's k; returns the previous value."""
    previous = getattr(layer.top_k_owner, layer.top_k_attribute)
    setattr(layer.top_k_owner, layer.top_k_attribute, k)
    return previous


FORCE_MARGIN = 0.01  # SteerMoE's: a forced expert's logit is the token's highest plus this


class EditedRouterLogits(TorchFunctionMode):
    """Active during one router's forward: its expert logits (the `linear` output with one column per expert) get
    the lowest value for disabled experts, so that softmax, sigmoid and top-k skip them, and for forced experts
    the token's highest logit plus a margin, so that top-k selects them."""

    def __init__(self, num_experts: int, disabled: frozenset[int], forced: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.disabled, self.forced = sorted(disabled), sorted(forced)
        self._masks: dict[tuple[torch.device, bool], torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if func is F.linear and output.shape[-1] == self.num_experts:
            lowest = torch.finfo(output.dtype).min
            if self.disabled:
                output = output.masked_fill(self._mask(output.device, forced=False), lowest)
            if self.forced:
                top = output.amax(-1, keepdim=True)  # SteerMoE's: the token's highest logit, forced experts included
                # a margin the dtype can represent at this magnitude (bf16 rounds 0.01 away above |logit| 2)
                margin = FORCE_MARGIN + top.abs() * 4 * torch.finfo(output.dtype).eps
                output = torch.where(self._mask(output.device, forced=True), top + margin, output)
        return output

    def _mask(self, device: torch.device, forced: bool) -> torch.Tensor:
        if (device, forced) not in self._masks:
            mask = torch.zeros(self.num_experts, dtype=torch.bool)
            mask[self.forced if forced else self.disabled] = True
            self._masks[device, forced] = mask.to(device)
        return self._masks[device, forced]


def selection_biases(layer: MoELayer) -> list[torch.Tensor]:
    """Router buffers added to expert scores before selection (e.g. DeepSeek-V3's e_score_correction_bias)."""
    return [
        buffer
        for buffer in layer.router.buffers(recurse=False)
        if buffer.dim() == 1 and buffer.shape[0] == layer.num_experts
    ]


def drop_weights(ids: torch.Tensor, weights: torch.Tensor, disabled: frozenset[int], renormalize: bool) -> torch.Tensor:
    """Weights with disabled experts zeroed (ids `[N, k]`), optionally rescaled to the original total."""
    off = torch.isin(ids, torch.tensor(sorted(disabled), device=ids.device))
    kept = weights.masked_fill(off, 0)
    if not renormalize:
        return kept
    total, kept_total = weights.sum(-1, keepdim=True), kept.sum(-1, keepdim=True)
    return torch.where(kept_total > 0, kept * total / kept_total.clamp_min(torch.finfo(kept.dtype).tiny), kept)
