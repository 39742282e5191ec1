"""Finding the MoE layers of a model, for every architecture transformers ships and for registered adapters.

Discovery is architecture-generic: every MoE model class of transformers 5.x declares its router in
`_can_record_outputs["router_logits"]` (an `OutputRecorder` naming the router class and which of its
outputs holds the logits), so we read those declarations instead of keeping a table of class names or
module paths. The router's parent module is the MoE block; its `experts` child, called as
`experts(hidden, top_k_index, top_k_weights)`, shows the routing actually used.

Models whose code lives outside transformers (MoLM, LLaMA-MoE, ...) get in through `register_router`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moe_rbench_models.errors import OptionError

# Routers whose number of experts per token is fixed by their algorithm (no `top_k` to change), with that k.
FIXED_TOP_K = {"switch_transformers": 1, "nllb_moe": 2, "phimoe": 2}


@dataclass(frozen=True)
class RouterAdapter:
    """How to read a gate module that does not follow transformers' MoE contract.

    `read(router, inputs, output)` returns the routing the gate decided for the N tokens of one forward
    call: expert ids `[N, k]` (int) and weights `[N, k]`. `logits(router, inputs, output)` optionally
    returns the raw router logits `[N, num_experts]`. `num_experts` and `top_k` (ints, or callables of the
    router) describe the gate; `top_k_attribute` names the router attribute that sets k at inference
    (None: k cannot be changed).
    """

    router_class: type[nn.Module]
    read: Callable[[nn.Module, tuple, Any], tuple[torch.Tensor, torch.Tensor]]
    num_experts: int | Callable[[nn.Module], int]
    top_k: int | Callable[[nn.Module], int]
    logits: Callable[[nn.Module, tuple, Any], torch.Tensor] | None = None
    top_k_attribute: str | None = None


_ADAPTERS: dict[type[nn.Module], RouterAdapter] = {}


class RouterRegistration:
    """A registered adapter; `remove()` (or leaving a `with` block) restores what was registered before."""

    def __init__(self, adapter: RouterAdapter) -> None:
        self.adapter = adapter
        self._previous = _ADAPTERS.get(adapter.router_class)
        _ADAPTERS[adapter.router_class] = adapter

    def remove(self) -> None:
        if _ADAPTERS.get(self.adapter.router_class) is not self.adapter:
            return
        if self._previous is None:
            del _ADAPTERS[self.adapter.router_class]
        else:
            _ADAPTERS[self.adapter.router_class] = self._previous

    def __enter__(self) -> RouterRegistration:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def register_router(adapter: RouterAdapter) -> RouterRegistration:
    """Make `moe_hf` find, record and intervene on a custom gate class (see RouterAdapter), until the returned
    registration is removed (`with register_router(...):` or `.remove()`)."""
    return RouterRegistration(adapter)


@dataclass(frozen=True)
class MoELayer:
    name: str  # module path of the router, e.g. "model.layers.3.mlp.gate"
    layer: int  # index of the transformer block that holds it
    side: str  # "decoder", or "encoder" in encoder-decoder models
    router: nn.Module
    block: nn.Module  # the MoE block holding router and experts
    num_experts: int
    top_k: int | None  # None where the router neither exposes nor fixes it
    top_k_owner: nn.Module | None  # the module whose `top_k_attribute` sets k; None: k is fixed
    top_k_attribute: str | None
    logits_index: int | None  # which router output holds the logits; None: the output is the logits
    reads_experts_call: bool  # routing is read from `experts(hidden, index, weights)`; else from the router
    adapter: RouterAdapter | None = None

    @property
    def key(self) -> str:
        return f"{self.side}.{self.layer}"


def declared_routers(model: nn.Module) -> dict[type[nn.Module], int | None]:
    """Router classes declared by the model's own classes, each with the index of its logits output."""
    found: dict[type[nn.Module], int | None] = {}
    for module_class in {type(module) for module in model.modules()}:
        declared = (getattr(module_class, "_can_record_outputs", None) or {}).get("router_logits")
        for recorder in declared if isinstance(declared, (list, tuple)) else [declared]:
            target = getattr(recorder, "target_class", recorder)
            if isinstance(target, type) and issubclass(target, nn.Module):
                found.setdefault(target, getattr(recorder, "index", None))
    return found


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every MoE layer of `model` in module order (empty for a dense model)."""
    routers = declared_routers(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    layers = []
    for name, module in model.named_modules():
        adapter = _ADAPTERS.get(type(module))
        if adapter is None and type(module) not in routers:
            continue
        block = model.get_submodule(name.rpartition(".")[0])
        block_index = re.search(r"\.(\d+)\.", f".{name}.")
        common = dict(
            name=name,
            layer=int(block_index.group(1)) if block_index else len(layers),
            side="encoder" if name.startswith("encoder.") else "decoder",
            router=module,
            block=block,
        )
        layers.append(_with_adapter(adapter, **common) if adapter else _declared(model_type, routers, **common))
    return layers


def _declared(model_type: str | None, routers: dict, *, router: nn.Module, block: nn.Module, **common) -> MoELayer:
    owner = (
        None
        if model_type in FIXED_TOP_K
        else next((module for module in (router, block) if isinstance(getattr(module, "top_k", None), int)), None)
    )
    experts = getattr(block, "experts", None)
    return MoELayer(
        router=router,
        block=block,
        num_experts=_num_experts(router),
        top_k=owner.top_k if owner is not None else FIXED_TOP_K.get(model_type),
        top_k_owner=owner,
        top_k_attribute="top_k" if owner is not None else None,
        logits_index=routers[type(router)],
        reads_experts_call=experts is not None and len(inspect.signature(experts.forward).parameters) >= 3,
        **common,
    )


def _with_adapter(adapter: RouterAdapter, *, router: nn.Module, block: nn.Module, **common) -> MoELayer:
    def value(spec):
        return spec(router) if callable(spec) else spec

    return MoELayer(
        router=router,
        block=block,
        num_experts=value(adapter.num_experts),
        top_k=value(adapter.top_k),
        top_k_owner=router if adapter.top_k_attribute else None,
        top_k_attribute=adapter.top_k_attribute,
        logits_index=None,
        reads_experts_call=False,
        adapter=adapter,
        **common,
    )


def _num_experts(router: nn.Module) -> int:
    if isinstance(getattr(router, "num_experts", None), int):
        return router.num_experts
    return next(p for p in router.parameters() if p.dim() == 2).shape[0]  # the [experts, hidden] projection


def require_moe(layers: list[MoELayer], option: str, model: nn.Module) -> None:
    if not layers:
        raise OptionError(
            f"`{option}` needs a Mixture-of-Experts model, but no MoE layer was found in "
            f"{type(model).__name__} (no router declared in transformers' `_can_record_outputs` and no adapter "
            "registered). For a model with its own gate code, register it with "
            "moe_rbench_models.routing.register_router(RouterAdapter(...))."
        )


def describe_moe(model: nn.Module, layers: list[MoELayer]) -> dict[str, Any]:
    """Summary for the results' config: architecture, MoE layer count, experts per layer, top-k, and the checkpoint
    it was loaded from (name and config fingerprint: routing/checkpoint.py)."""
    return describe_moe_config(model.config, layers, type(model).__name__)


def describe_moe_config(config, layers: list[MoELayer], class_name: str | None = None) -> dict[str, Any]:
    """`describe_moe` from the model's config (`class_name`: the model class, where the config names none)."""
    from moe_rbench_models.routing.checkpoint import checkpoint_identity

    architecture = (getattr(config, "architectures", None) or [class_name])[0]

    def uniform(values: list[int | None]) -> int | list[int | None] | None:
        if not values:
            return None
        return values[0] if len(set(values)) == 1 else values

    return {
        "architecture": architecture,
        "model_type": config.model_type,
        "moe_layers": len(layers),
        "experts_per_layer": uniform([layer.num_experts for layer in layers]),
        "top_k": uniform([layer.top_k for layer in layers]),
        "checkpoint": checkpoint_identity(config),
    }
