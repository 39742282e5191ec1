"""MoE routing: find the MoE layers of any model, record where the router sends every token of every
lm-eval request, and change routing at inference time. Tracing and attribution over saved records live in the
tools package (`moe_rbench.trace`).

By purpose: discovery.py finds MoE layers; interventions.py is everything that changes routing (top-k, disabling and
forcing experts, the router edits and the check of each token's selection, the steering limits); hooks.py reads
routing; requests.py, writer.py and records.py capture it per request, write and read it; session.py puts a run's
parts together for `moe_hf`; checkpoint.py identifies the checkpoint of recorded routing.

Public API: `find_moe_layers`, `register_router` / `RouterAdapter` (gates outside transformers),
`load_records` / `load_manifest` (read a `routing_out` directory), and what the `moe-rbench` tools use. The tools
import these names from here, never from the modules (pyproject.toml's import contract).
"""

from moe_rbench_models.routing.checkpoint import config_fingerprint, describe_checkpoint, weights_fingerprint
from moe_rbench_models.routing.discovery import (
    MoELayer,
    RouterAdapter,
    describe_moe,
    find_moe_layers,
    register_router,
)
from moe_rbench_models.routing.hooks import HookSet, router_logits
from moe_rbench_models.routing.interventions import set_top_k, steering_limit, top_k_limit
from moe_rbench_models.routing.records import (
    VERSION,
    LayerRouting,
    RoutingRecord,
    expert_counts,
    load_manifest,
    load_records,
    recorded_tasks,
)

__all__ = [
    "VERSION",
    "HookSet",
    "LayerRouting",
    "MoELayer",
    "RouterAdapter",
    "RoutingRecord",
    "config_fingerprint",
    "describe_checkpoint",
    "describe_moe",
    "expert_counts",
    "find_moe_layers",
    "load_manifest",
    "load_records",
    "recorded_tasks",
    "register_router",
    "router_logits",
    "set_top_k",
    "steering_limit",
    "top_k_limit",
    "weights_fingerprint",
]
