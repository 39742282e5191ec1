"""Per-request MoE settings, read from `SamplingParams.extra_args[KEY]` and checked against the model's layers.

    extra_args = {"moe_rbench": {
        "tag": "doc-3",                 # name under which captured routing is fetched (unique per live request)
        "capture": True,                # record every position's experts and weights per MoE layer
        "top_k": 1 or {3: 1},           # experts per token, all MoE layers or per decoder layer index
        "force": {3: [5]},              # SteerMoE's activation: log_softmax, forced expert <- row max + 0.01
        "disable": {0: [0, 1]},         # moe_hf's disable_mode=reroute: the experts are never selected
    }}

Layer keys are decoder layer indices (moe_hf's `MoELayer.layer`), as ints or digit strings. The semantics are
moe_hf's (moe_rbench_models/routing/interventions.py); one limit is vLLM's: `top_k` may lower the model's k but
not raise it (the fused kernels' buffers are sized by the model's k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing.interventions import steering_limit
from moe_rbench_models.vllm.checks import LayerInfo

KEY = "moe_rbench"
FIELDS = ("tag", "capture", "top_k", "force", "disable")


@dataclass(frozen=True)
class LayerEdit:
    """What a request changes in one MoE layer."""

    top_k: int | None = None
    forced: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()

    @property
    def edits_logits(self) -> bool:
        return bool(self.forced or self.removed)


@dataclass(frozen=True)
class RequestSettings:
    tag: str | None
    capture: bool
    edits: dict[int, LayerEdit]  # by decoder layer index; only layers that change
    kept: dict[int, int]  # experts per token in each MoE layer (decoder layer index), the model's k unless lowered


def read_settings(extra_args: dict[str, Any] | None, layers: dict[int, LayerInfo]) -> RequestSettings | None:
    """The request's settings (None when it has none), checked; OptionError naming the problem otherwise."""
    raw = (extra_args or {}).get(KEY)
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - set(FIELDS):
        unknown = sorted(map(str, set(raw) - set(FIELDS))) if isinstance(raw, dict) else type(raw).__name__
        raise OptionError(f"extra_args[{KEY!r}] must be a dict with keys {', '.join(FIELDS)}; got {unknown}")
    capture, tag = raw.get("capture", False), raw.get("tag")
    if not isinstance(capture, bool):
        raise OptionError(f"extra_args[{KEY!r}]['capture'] must be true or false, got {capture!r}")
    if tag is not None and (not isinstance(tag, str) or not tag):
        raise OptionError(f"extra_args[{KEY!r}]['tag'] must be a non-empty string, got {tag!r}")
    if capture and tag is None:
        raise OptionError(f"extra_args[{KEY!r}] asks for capture without a 'tag' to fetch it by; add a unique tag")
    top_k = _top_k_per_layer(raw.get("top_k"), layers)
    forced = _experts_per_layer(raw.get("force"), "force", layers)
    removed = _experts_per_layer(raw.get("disable"), "disable", layers)
    edits = {
        index: LayerEdit(top_k.get(index), forced.get(index, ()), removed.get(index, ()))
        for index in sorted(set(top_k) | set(forced) | set(removed))
    }
    for index, edit in edits.items():
        _check_edit(layers[index], edit)
    kept = {index: top_k.get(index, layer.top_k) for index, layer in layers.items()}
    return RequestSettings(tag, capture, edits, kept)


def _layer_index(key: Any, option: str, layers: dict[int, LayerInfo]) -> int:
    index = int(key) if isinstance(key, int) or isinstance(key, str) and key.isdigit() else None
    if index is None or index not in layers:
        raise OptionError(
            f"extra_args[{KEY!r}][{option!r}]: layer {key!r} is not an MoE layer of this model; MoE layers "
            f"(decoder layer indices): {', '.join(map(str, sorted(layers)))}"
        )
    return index


def _top_k_per_layer(spec: Any, layers: dict[int, LayerInfo]) -> dict[int, int]:
    if spec is None:
        return {}
    per_layer = dict.fromkeys(layers, spec) if isinstance(spec, int) else spec
    if not isinstance(per_layer, dict):
        raise OptionError(f"extra_args[{KEY!r}]['top_k'] must be a number or {{layer: number}}, got {spec!r}")
    chosen = {}
    for key, k in per_layer.items():
        index = _layer_index(key, "top_k", layers)
        limit = layers[index].top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
            raise OptionError(
                f"extra_args[{KEY!r}]['top_k'] for layer {index} must be between 1 and the model's {limit} (vLLM's "
                f"fused kernels are sized by the model's k; use moe_hf to raise it), got {k!r}"
            )
        chosen[index] = k
    return chosen


def _experts_per_layer(spec: Any, option: str, layers: dict[int, LayerInfo]) -> dict[int, tuple[int, ...]]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise OptionError(f"extra_args[{KEY!r}][{option!r}] must be {{layer: [expert ids]}}, got {spec!r}")
    chosen = {}
    for key, experts in spec.items():
        index = _layer_index(key, option, layers)
        count = layers[index].num_experts
        if not isinstance(experts, (list, tuple)) or not experts or not all(type(e) is int for e in experts):
            raise OptionError(f"extra_args[{KEY!r}][{option!r}][{key!r}] must be a non-empty list of expert ids")
        bad = sorted(e for e in experts if not 0 <= e < count)
        if bad:
            raise OptionError(f"extra_args[{KEY!r}][{option!r}]: layer {index} has experts 0-{count - 1}; got {bad}")
        chosen[index] = tuple(sorted(set(experts)))
    return chosen


def _check_edit(layer: LayerInfo, edit: LayerEdit) -> None:
    """moe_hf's limits (interventions.py, `_check_layer` with `steering_limit`): an expert is forced or disabled, not
    both; rerouting leaves at least k experts; at most k experts are forced."""
    k = edit.top_k if edit.top_k is not None else layer.top_k
    both = sorted(set(edit.forced) & set(edit.removed))
    if both:
        raise OptionError(f"layer {layer.index}: experts {both} are both disabled and forced; keep each in one")
    if len(edit.removed) > steering_limit("disable", layer.num_experts, k):
        raise OptionError(
            f"disable: layer {layer.index} would keep {layer.num_experts - len(edit.removed)} experts for top-k {k}; "
            "rerouting needs at least k enabled experts"
        )
    if len(edit.forced) > steering_limit("force", layer.num_experts, k):
        raise OptionError(
            f"force: layer {layer.index} selects {k} experts per token, so at most {k} can be forced; got "
            f"{len(edit.forced)}. Force fewer, or raise top_k."
        )
