"""Inference-time routing interventions: the number of active experts, and switching experts off or on.

- `top_k=K`, or per layer `top_k="LAYER:K;LAYER:K"`: the router's own `top_k` is set (read at every call).
- `force_experts="*:3,7"` or `"12:5;13:0"`: SteerMoE's activation (Fayyaz et al. 2025; adobe-research/SteerMoE
  @0c7e6b5, `src/modeling_vllm/olmoe.py` l.117-123, the same in mixtral.py l.126-132, qwen3_moe.py l.158-164,
  phimoe.py l.315-321, gpt_oss.py l.186-192): the router's logits become log-probabilities (`log_softmax`, in the
  logits' own dtype), and a forced expert's is set to the token's highest plus 0.01; the router then scores, selects
  and normalises as it always does. Routers that do not score experts by a softmax of the logits (sigmoid routers
  such as DeepSeek-V3's, which SteerMoE does not cover) get the same edit on the raw logits (`scoring_space`).
- `disable_experts="*:3,7"` or `"12:5;13:0"` with
  - `disable_mode=reroute` (hard removal): the disabled experts' scores are the lowest value of the dtype, so
    that every token picks its best enabled experts and a disabled expert carries no probability mass (additive
    selection biases, as DeepSeek-V3's, are masked too); at least k experts must stay enabled;
  - `disable_mode=steermoe`: SteerMoE's deactivation (same files and lines): the disabled experts' log-probability
    is the token's lowest minus 0.01, so they rank last but keep a little probability mass in routers that do not
    renormalise, and are still selected when fewer than k experts are left;
  - `disable_mode=drop`: routing is kept and the disabled experts' weights are zeroed; with
    `drop_renormalize=true` the remaining weights are rescaled to the original total.

LAYER is a transformer block index (`12`), `encoder.N` / `decoder.N` in encoder-decoder models, or `*`.

Everything that changes routing is here: reading these options (`read_top_k`, `read_experts`), the plan and its
limits (`plan_interventions`, `steering_limit`, `top_k_limit`), the edits (`steer_router`: k, router logits,
selection biases; `drop_weights`) and the check of every token's selection (`check_selection`). hooks.py reads
routing and calls these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from moe_rbench_models.errors import OptionError
from moe_rbench_models.internals import InternalsChanged
from moe_rbench_models.routing.discovery import MoELayer
from moe_rbench_models.specs import LayerSpec, read_choice, read_layer_spec

DISABLE_MODES = ("reroute", "steermoe", "drop")


@dataclass(frozen=True)
class LayerIntervention:
    top_k: int | None = None
    disabled: frozenset[int] = frozenset()
    mode: str = "reroute"
    renormalize: bool = False
    forced: frozenset[int] = frozenset()

    @property
    def edits_logits(self) -> bool:
        return bool(self.forced) or bool(self.disabled) and self.mode in ("reroute", "steermoe")

    @property
    def drops(self) -> bool:
        """The routing is kept and the disabled experts' weights are zeroed (`drop_weights`)."""
        return bool(self.disabled) and self.mode == "drop"

    @property
    def removed(self) -> frozenset[int]:
        """Experts taken out of selection (hard removal)."""
        return self.disabled if self.mode == "reroute" else frozenset()

    @property
    def lowered(self) -> frozenset[int]:
        """Experts ranked last, SteerMoE's way (still selected when fewer than k are left)."""
        return self.disabled if self.mode == "steermoe" else frozenset()


def resolve_layers(spec: str, layers: list[MoELayer]) -> list[MoELayer]:
    """The MoE layers a layer spec (`*`, `12`, `decoder.12`) names; clear errors otherwise."""
    spec = spec.strip()
    if spec == "*":
        return list(layers)
    matches = [layer for layer in layers if spec in (layer.key, str(layer.layer))]
    two_sides = len({layer.side for layer in layers}) > 1
    available = ", ".join(layer.key if two_sides else str(layer.layer) for layer in layers)
    if not matches:
        raise OptionError(f"Layer {spec!r} is not an MoE layer of this model; MoE layers: {available}")
    if len(matches) > 1:
        raise OptionError(f"Layer {spec!r} is ambiguous here (encoder and decoder); write one of: {available}")
    return matches


TOP_K_VALUE = "one number of experts per token"
EXPERT_IDS = "expert ids such as '*:3,7'"


def read_top_k(spec: Any, option: str = "top_k") -> LayerSpec:
    """`top_k=K` or `"LAYER:K;..."`, read (the layers are resolved against a model by plan_interventions)."""
    return read_layer_spec(spec, option, TOP_K_VALUE, one_value=True)


def read_experts(spec: Any, option: str) -> LayerSpec:
    """`disable_experts` / `force_experts`: `"LAYER:ids;..."`, read."""
    return read_layer_spec(spec, option, EXPERT_IDS)


def check_disable_options(disable_mode: str, drop_renormalize: bool) -> None:
    read_choice(disable_mode, "disable_mode", DISABLE_MODES)
    if drop_renormalize and disable_mode != "drop":
        raise OptionError("drop_renormalize applies to disable_mode=drop only")


def plan_interventions(
    layers: list[MoELayer],
    top_k: LayerSpec | str | int | dict | None = None,
    disable_experts: LayerSpec | str | dict | None = None,
    disable_mode: str = "reroute",
    drop_renormalize: bool = False,
    force_experts: LayerSpec | str | dict | None = None,
) -> dict[str, LayerIntervention]:
    """Validated interventions per layer key (empty when none is asked for); the specs as written or read."""
    check_disable_options(disable_mode, drop_renormalize)
    new_k: dict[str, int] = {}
    for layer_spec, (k,) in read_top_k(top_k).parts if top_k is not None else []:
        for layer in resolve_layers(layer_spec, layers):
            new_k[layer.key] = _checked_top_k(layer, k)
    disabled = _experts_per_layer(disable_experts, "disable_experts", layers)
    forced = _experts_per_layer(force_experts, "force_experts", layers)
    plan = {}
    for layer in layers:
        if layer.key not in new_k and layer.key not in disabled and layer.key not in forced:
            continue
        off, on = frozenset(disabled.get(layer.key, ())), frozenset(forced.get(layer.key, ()))
        k = new_k.get(layer.key, layer.top_k)
        _check_layer(layer, off, on, k, disable_mode)
        plan[layer.key] = LayerIntervention(new_k.get(layer.key), off, disable_mode, drop_renormalize, on)
    return plan


def steering_limit(kind: str, num_experts: int, top_k: int, disable_mode: str = "reroute") -> int:
    """How many experts of a layer that routes each token to `top_k` of `num_experts` may be forced (`kind="force"`:
    at most k, as every forced expert is selected) or disabled (`"disable"`: disable_mode=reroute must leave k enabled;
    steermoe ranks disabled experts last and drop zeroes their weights, so any number may be disabled)."""
    if kind == "force":
        return top_k
    return num_experts - top_k if disable_mode == "reroute" else num_experts


def _check_layer(layer: MoELayer, off: frozenset[int], on: frozenset[int], k: int | None, disable_mode: str) -> None:
    if off & on:
        raise OptionError(
            f"layer {layer.key}: experts {sorted(off & on)} are both disabled and forced; keep each expert in one "
            "of disable_experts and force_experts"
        )
    if off and disable_mode == "drop" and layer.adapter is not None:
        raise OptionError(
            f"disable_mode=drop needs the routing a gate hands to its experts; the adapter for "
            f"{type(layer.router).__name__} only reads it. Use disable_mode=reroute."
        )
    if (on or off and disable_mode == "steermoe") and layer.adapter is not None:
        raise OptionError(
            f"{'force_experts' if on else 'disable_mode=steermoe'} edits the router's log-probabilities, which "
            f"the adapter for {type(layer.router).__name__} does not expose (it only reads its gate). Use "
            "disable_experts with disable_mode=reroute."
        )
    if off and k is not None and len(off) > steering_limit("disable", layer.num_experts, k, disable_mode):
        raise OptionError(
            f"disable_experts: layer {layer.key} would keep {layer.num_experts - len(off)} experts "
            f"for top-k {k}; rerouting needs at least k enabled experts (disable_mode=steermoe ranks disabled "
            "experts last instead, and uses them when fewer than k are left)"
        )
    if on:
        _check_forceable(layer, on, k)


def _check_forceable(layer: MoELayer, forced: frozenset[int], k: int | None) -> None:
    router = type(layer.router).__name__
    if k is not None and len(forced) > steering_limit("force", layer.num_experts, k):
        raise OptionError(
            f"force_experts: layer {layer.key} selects {k} experts per token, so at most {k} can be forced; got "
            f"{len(forced)} ({sorted(forced)}). Force fewer, or raise top_k."
        )
    capacity = getattr(layer.router, "expert_capacity", None)
    if capacity is not None:
        raise OptionError(
            f"force_experts: {router} (layer {layer.key}) gives each expert a capacity of {capacity} tokens; a forced "
            "expert would get every token and drop those past its capacity (processed by no expert). Use "
            "disable_experts on this model."
        )
    groups, kept_groups = getattr(layer.router, "num_group", None), getattr(layer.router, "topk_group", None)
    if isinstance(groups, int) and isinstance(kept_groups, int) and groups > 0:
        spanned = sorted({expert // (layer.num_experts // groups) for expert in forced})
        if len(spanned) > kept_groups:
            raise OptionError(
                f"force_experts: {router} (layer {layer.key}) selects experts within its best {kept_groups} of "
                f"{groups} groups; the forced experts {sorted(forced)} lie in {len(spanned)} groups ({spanned}). "
                f"Force experts of at most {kept_groups} groups."
            )


def _experts_per_layer(spec: LayerSpec | str | dict | None, option: str, layers: list[MoELayer]) -> dict[str, set[int]]:
    """`"LAYER:ids;..."` as expert ids per layer key, each checked against the layer's experts."""
    chosen: dict[str, set[int]] = {}
    for layer_spec, values in read_experts(spec, option).parts if spec is not None else []:
        experts = set(values)
        for layer in resolve_layers(layer_spec, layers):
            bad = sorted(e for e in experts if not 0 <= e < layer.num_experts)
            if bad:
                raise OptionError(f"{option}: layer {layer.key} has experts 0-{layer.num_experts - 1}; got {bad}")
            chosen.setdefault(layer.key, set()).update(experts)
    return chosen


def _checked_top_k(layer: MoELayer, k: int) -> int:
    if layer.top_k_owner is None:
        raise OptionError(
            f"top_k cannot be changed for layer {layer.key}: {type(layer.router).__name__} routes each token to a "
            f"fixed number of experts ({layer.top_k}) by construction"
        )
    limit = top_k_limit(layer)
    if not 1 <= k <= limit:
        raise OptionError(f"top_k for layer {layer.key} must be between 1 and {limit}, got {k}")
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


STEERMOE_MARGIN = 0.01  # SteerMoE's: forced <- the token's highest score + 0.01, lowered <- its lowest - 0.01
SCORING_SPACES = ("log_softmax", "logits")


def steered_scores(
    logits: torch.Tensor,
    forced: torch.Tensor | None,
    lowered: torch.Tensor | None,
    removed: torch.Tensor | None,
    space: str,
) -> torch.Tensor:
    """Router logits `[..., E]` edited as SteerMoE edits them (the masks are `[E]` booleans or None): in `space`
    `log_softmax` the logits become log-probabilities first, computed in their own dtype as SteerMoE does; each token's
    highest and lowest score are taken before any edit; forced experts get the highest + 0.01, lowered ones the
    lowest - 0.01, and removed ones the lowest value of the dtype (our hard removal)."""
    scores = F.log_softmax(logits, dim=-1) if space == "log_softmax" else logits
    top, bottom = scores.amax(-1, keepdim=True), scores.amin(-1, keepdim=True)
    if forced is not None:
        scores = torch.where(forced, top + STEERMOE_MARGIN, scores)
    if lowered is not None:
        scores = torch.where(lowered, bottom - STEERMOE_MARGIN, scores)
    if removed is not None:
        scores = scores.masked_fill(removed, torch.finfo(scores.dtype).min)
    return scores


class EditedRouterLogits(TorchFunctionMode):
    """Active during one router's forward: its expert logits (the `linear` output with one column per expert) are
    replaced by `steered_scores`, which the router then scores, selects and normalises as usual."""

    def __init__(self, num_experts: int, change: LayerIntervention, space: str) -> None:
        super().__init__()
        self.num_experts, self.space = num_experts, space
        self.experts = {"forced": change.forced, "lowered": change.lowered, "removed": change.removed}
        self._masks: dict[tuple[torch.device, str], torch.Tensor | None] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if func is F.linear and output.shape[-1] == self.num_experts:
            masks = {name: self._mask(output.device, name) for name in self.experts}
            output = steered_scores(output, masks["forced"], masks["lowered"], masks["removed"], self.space)
        return output

    def _mask(self, device: torch.device, name: str) -> torch.Tensor | None:
        if (device, name) not in self._masks:
            experts = sorted(self.experts[name])
            mask = torch.zeros(self.num_experts, dtype=torch.bool, device=device) if experts else None
            if mask is not None:
                mask[experts] = True
            self._masks[device, name] = mask
        return self._masks[device, name]


class _ScoringProbe(TorchFunctionMode):
    """Follows a router's expert logits (the `linear` output with one column per expert, inside the router) through
    one forward of its MoE block, and notes which of softmax and sigmoid is applied to them or to floating-point
    tensors computed from them. Integer tensors (selected ids, sort orders) carry no scores and are not followed."""

    SOFTMAX = {"softmax", "log_softmax", "_softmax", "_log_softmax"}
    SIGMOID = {"sigmoid", "sigmoid_"}

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts, self.inside_router = num_experts, False
        self.followed: dict[int, torch.Tensor] = {}  # id -> tensor, kept alive so that ids are not reused
        self.seen: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        inputs = _tensors((args, kwargs or {}))
        is_source = self.inside_router and func is F.linear and output.shape[-1] == self.num_experts
        if is_source or any(id(x) in self.followed for x in inputs if x.is_floating_point()):
            name = getattr(func, "__name__", "")
            self.seen |= {"softmax"} if name in self.SOFTMAX else {"sigmoid"} if name in self.SIGMOID else set()
            for tensor in _tensors(output):
                if tensor.is_floating_point():
                    self.followed[id(tensor)] = tensor
        return output


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple, list or dict of call arguments or results."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


def scoring_space(layer: MoELayer) -> str:
    """Where SteerMoE's edit applies for this layer: `log_softmax` when the router scores experts by a softmax of its
    logits (then log-probabilities and logits give the same routing, and SteerMoE's edit is exact), `logits` when it
    scores them by a sigmoid (DeepSeek-V3, Llama4: SteerMoE covers no such router, and log-probabilities would change
    every expert's sigmoid weight). Found by following the logits through one forward of the MoE block on two random
    tokens (no gradients, the global random state untouched)."""
    weight = next(p for p in layer.router.parameters() if p.dim() == 2 and p.shape[0] == layer.num_experts)
    routers = {id(parameter) for parameter in layer.router.parameters()}
    block_weight = next((p for p in layer.block.parameters() if id(p) not in routers), weight)  # the hidden dtype
    hidden = torch.randn(1, 2, weight.shape[1], generator=torch.Generator().manual_seed(0))
    probe = _ScoringProbe(layer.num_experts)
    handles = [
        layer.router.register_forward_pre_hook(lambda module, args: setattr(probe, "inside_router", True)),
        layer.router.register_forward_hook(lambda module, args, output: setattr(probe, "inside_router", False)),
    ]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), probe:
            layer.block(hidden.to(dtype=block_weight.dtype, device=block_weight.device))
    finally:
        for handle in handles:
            handle.remove()
    if len(probe.seen) != 1:
        raise InternalsChanged(
            "transformers",
            f"{type(layer.block).__name__} (layer {layer.key}) applies "
            f"{' and '.join(sorted(probe.seen)) or 'neither softmax nor sigmoid'} to its router logits (the `linear` "
            f"output with {layer.num_experts} columns inside {type(layer.router).__name__}); force_experts and "
            "disable_mode=steermoe edit routers that compute their logits with one `linear` call and score experts "
            "by one softmax or one sigmoid of them",
        )
    return "log_softmax" if probe.seen == {"softmax"} else "logits"


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


# -- applying a plan ---------------------------------------------------------------------------------------------


def steer_router(layer: MoELayer, change: LayerIntervention) -> tuple[list[RemovableHandle], list[Callable[[], None]]]:
    """The layer's k set and its router's scores edited as `change` asks; returns the hook handles and the steps that
    restore the model."""
    handles: list[RemovableHandle] = []
    restore: list[Callable[[], None]] = []
    if change.top_k is not None:
        previous = set_top_k(layer, change.top_k)
        restore.append(lambda: set_top_k(layer, previous))
    if not change.edits_logits:
        return handles, restore
    space = scoring_space(layer) if change.forced or change.lowered else "logits"
    mode = EditedRouterLogits(layer.num_experts, change, space)
    handles.append(layer.router.register_forward_pre_hook(lambda module, args: mode.__enter__() and None))
    handles.append(
        layer.router.register_forward_hook(
            lambda module, args, output: mode.__exit__(None, None, None) and None, always_call=True
        )
    )
    for bias in selection_biases(layer):
        original = bias.clone()
        # selection scores are in [0, 1] plus the bias: these biases put a forced expert above every other one
        # and a lowered one below every other one; removed experts are never selected
        bias[list(change.removed)] = float("-inf")
        bias[list(change.lowered)] = -original.abs().max() - 1e4
        bias[list(change.forced)] = original.abs().max() + 1e4
        restore.append(lambda bias=bias, original=original: bias.copy_(original))
    return handles, restore


def check_selection(layer: MoELayer, change: LayerIntervention, ids, dropped, logits) -> None:
    """Each token's selection (`ids [N, k]`; `dropped [N]`: tokens over capacity) agrees with the forced and disabled
    experts of `change`; `logits`: the router's (edited) logits, which excuse ties where the router selects by them
    alone (no selection bias)."""
    if change.forced or change.removed or change.lowered:
        _check_selected(layer, change, ids, dropped, None if selection_biases(layer) else logits)


def _check_selected(layer: MoELayer, change: LayerIntervention, ids, dropped, scores) -> None:
    """The router selected by the edited scores: removed experts never; a forced expert always, a lowered one only
    where fewer than k enabled experts are left, except where `scores` (the edited scores, when the router selects by
    them alone) tie: SteerMoE's +-0.01 can round to a tie in bfloat16, and then SteerMoE's own code selects either."""
    if dropped is not None and dropped.any() and change.forced:
        raise RuntimeError(
            f"Forcing failed in layer {layer.key}: {int(dropped.sum())} tokens exceeded the forced expert's "
            "capacity and were processed by no expert. Use disable_experts on this model."
        )
    kept = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device) if dropped is None else ~dropped
    selected = torch.zeros(ids.shape[0], layer.num_experts, dtype=torch.bool, device=ids.device)
    selected.scatter_(1, ids.long(), True)
    steered = sorted(change.forced | change.removed | change.lowered)
    edited = torch.zeros(layer.num_experts, dtype=torch.bool, device=ids.device)
    edited[steered] = True
    if scores is not None:  # a tie with an expert on the other side of the selection excuses a token
        scores = scores.float()
        lowest_taken = scores.masked_fill(~selected, float("inf")).amin(-1, keepdim=True)
        best_left = scores.masked_fill(selected | edited, float("-inf")).amax(-1, keepdim=True)
    for expert in steered:
        if expert in change.forced:
            wrong, tied = ~selected[:, expert], None if scores is None else scores[:, expert] == lowest_taken[:, 0]
        else:
            allowed = expert in change.lowered and ids.shape[-1] > layer.num_experts - len(change.disabled)
            wrong = selected[:, expert] & ~torch.tensor(allowed, device=ids.device)
            tied = None if scores is None or expert in change.removed else scores[:, expert] == best_left[:, 0]
        failed = wrong & kept & (torch.ones_like(wrong) if tied is None else ~tied)
        if failed.any():
            raise RuntimeError(_steering_failure(layer, change, expert, int(failed.sum())))


def _steering_failure(layer: MoELayer, change: LayerIntervention, expert: int, tokens: int) -> str:
    what = "did not select forced" if expert in change.forced else "selected disabled"
    return (
        f"{'Forcing' if expert in change.forced else 'Disabling'} failed in layer {layer.key}: "
        f"{type(layer.router).__name__} {what} expert {expert} for {tokens} token(s) although the edited router scores "
        "say otherwise. Its scores do not come from a linear projection this hook can edit: register a RouterAdapter "
        "for it" + (", or use disable_mode=drop." if expert not in change.forced else ", or use disable_experts.")
    )
