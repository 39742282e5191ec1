"""Finding the MoE layers of any transformers model.

Discovery is architecture-generic: every MoE model class of transformers 5.x declares its router in
`_can_record_outputs["router_logits"]` (an `OutputRecorder` naming the router class), so we read those
declarations instead of keeping a table of class names or module paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

# Routers that pick a fixed number of experts and have no `top_k` attribute.
_FIXED_TOP_K = {"switch_transformers": 1, "nllb_moe": 2}


@dataclass(frozen=True)
class MoELayer:
    name: str  # module path of the router, e.g. "model.layers.3.mlp.gate"
    layer: int  # index of the transformer block that holds it
    side: str  # "decoder", or "encoder" in encoder-decoder models
    router: nn.Module
    num_experts: int
    top_k: int | None  # None where the router neither exposes nor fixes it


def declared_router_classes(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """Router classes declared by the model's own classes in `_can_record_outputs["router_logits"]`."""
    found: list[type[nn.Module]] = []
    for module_class in {type(module) for module in model.modules()}:
        declared = (getattr(module_class, "_can_record_outputs", None) or {}).get("router_logits")
        for recorder in declared if isinstance(declared, (list, tuple)) else [declared]:
            target = getattr(recorder, "target_class", recorder)
            if isinstance(target, type) and target not in found:
                found.append(target)
    return tuple(found)


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every MoE layer of `model` in module order (empty for a dense model)."""
    router_classes = declared_router_classes(model)
    if not router_classes:
        return []
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, router_classes):
            block = re.search(r"\.(\d+)\.", f".{name}.")
            layers.append(
                MoELayer(
                    name=name,
                    layer=int(block.group(1)) if block else len(layers),
                    side="encoder" if name.startswith("encoder.") else "decoder",
                    router=module,
                    num_experts=_num_experts(module),
                    top_k=getattr(module, "top_k", None) or _FIXED_TOP_K.get(model_type),
                )
            )
    return layers


def _num_experts(router: nn.Module) -> int:
    if isinstance(getattr(router, "num_experts", None), int):
        return router.num_experts
    return router.weight.shape[0]


def describe_moe(model: nn.Module, layers: list[MoELayer]) -> dict[str, Any]:
    """Summary for the results' config: architecture, MoE layer count, experts per layer, top-k."""
    config = model.config
    architecture = (getattr(config, "architectures", None) or [type(model).__name__])[0]

    def uniform(values: list[int]) -> int | list[int] | None:
        if not values:
            return None
        return values[0] if len(set(values)) == 1 else values

    return {
        "architecture": architecture,
        "model_type": config.model_type,
        "moe_layers": len(layers),
        "experts_per_layer": uniform([layer.num_experts for layer in layers]),
        "top_k": uniform([layer.top_k for layer in layers]),
    }
