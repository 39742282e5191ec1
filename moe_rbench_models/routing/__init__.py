"""MoE routing: find the MoE layers of any model, record where the router sends every token of every
lm-eval request, and change routing at inference time. Tracing and attribution over saved records live in the
tools package (`moe_rbench.trace`).

Public API: `find_moe_layers`, `register_router` / `RouterAdapter` (gates outside transformers),
`load_records` / `load_manifest` (read a `routing_out` directory).
"""

from moe_rbench_models.routing.discovery import (
    MoELayer,
    RouterAdapter,
    describe_moe,
    find_moe_layers,
    register_router,
)
from moe_rbench_models.routing.records import LayerRouting, RoutingRecord, load_manifest, load_records

__all__ = [
    "LayerRouting",
    "MoELayer",
    "RouterAdapter",
    "RoutingRecord",
    "describe_moe",
    "find_moe_layers",
    "load_manifest",
    "load_records",
    "register_router",
]
