"""MoE routing: find the MoE layers of any model, record where the router sends every token of every
lm-eval request, change routing at inference time, and compare routing across datasets.

Public API: `find_moe_layers`, `register_router` / `RouterAdapter` (gates outside transformers),
`load_records` / `load_manifest` (read a `routing_out` directory), `trace_routing` (ID vs OOD shifts).
"""

from moe_rbench_models.routing.discovery import (
    MoELayer,
    RouterAdapter,
    describe_moe,
    find_moe_layers,
    register_router,
)
from moe_rbench_models.routing.records import LayerRouting, RoutingRecord, load_manifest, load_records
from moe_rbench_models.routing.trace import TraceRow, trace_routing, write_trace

__all__ = [
    "LayerRouting",
    "MoELayer",
    "RouterAdapter",
    "RoutingRecord",
    "TraceRow",
    "describe_moe",
    "find_moe_layers",
    "load_manifest",
    "load_records",
    "register_router",
    "trace_routing",
    "write_trace",
]
