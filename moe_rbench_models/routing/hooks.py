"""The hooks `moe_hf` puts on MoE layers to read routing: what the routers selected, recorded and checked.

What changes routing (top-k, the logit and bias edits, `drop`'s weights, the check of each token's selection) is
interventions.py's; `RoutingHooks` installs it and reads, per layer, the router (logits; routers that also
dispatch, as Llama4's) and the experts module (`experts(hidden, top_k_index, top_k_weights)`: the routing actually
used, rewritten for `drop`). Recording keeps, per forward call, the top-k expert ids and weights of every
token (N = batch x sequence, padding included), capacity-dropped tokens (Switch) and, when asked, logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from moe_rbench_models.internals import InternalsChanged
from moe_rbench_models.routing.discovery import MoELayer
from moe_rbench_models.routing.interventions import LayerIntervention, check_selection, drop_weights, steer_router


@dataclass
class ForwardRouting:
    """What one MoE layer routed in one forward call of N tokens."""

    ids: torch.Tensor  # [N, k] int16
    weights: torch.Tensor  # [N, k] float16
    dropped: torch.Tensor | None = None  # [N] bool: token over capacity, processed by no expert (Switch)
    logits: torch.Tensor | None = None  # [N, num_experts] float32, when logits are kept


def router_logits(layer: MoELayer, output) -> torch.Tensor:
    """The logits `[tokens, num_experts]` in a router's output (a reference: gradients flow through it)."""
    logits = output if isinstance(output, torch.Tensor) else output[layer.logits_index]
    if not isinstance(logits, torch.Tensor) or logits.shape[-1] != layer.num_experts:
        raise InternalsChanged(
            "transformers",
            f"{type(layer.router).__name__} output {layer.logits_index} is no "
            f"longer the router logits [tokens, {layer.num_experts}]",
        )
    return logits.reshape(-1, layer.num_experts)


class HookSet:
    """Hook handles and undo steps on a model; `remove()` takes the hooks off and undoes the changes."""

    def __init__(self) -> None:
        self._handles: list = []
        self._restore: list = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for restore in reversed(self._restore):
            restore()
        self._handles, self._restore = [], []


class RoutingHooks(HookSet):
    def __init__(self, layers: list[MoELayer], plan: dict[str, LayerIntervention], record: bool, keep_logits: bool):
        super().__init__()
        self.layers, self.plan, self.record, self.keep_logits = layers, plan, record, keep_logits
        self.calls: dict[str, list[ForwardRouting]] = {layer.key: [] for layer in layers}
        self._logits: dict[str, torch.Tensor] = {}

    def install(self) -> RoutingHooks:
        """The plan's interventions on every layer (interventions.steer_router), then the hooks that read routing:
        for recording, and to check each token's selection against forced and disabled experts."""
        for layer in self.layers:
            change = self.plan.get(layer.key, LayerIntervention())
            handles, restore = steer_router(layer, change)
            self._handles += handles
            self._restore += restore
            if self.record or change.disabled or change.forced:
                self._read_routing(layer, change)
        return self

    def take(self) -> dict[str, list[ForwardRouting]]:
        """The calls recorded since the last take, per layer key."""
        calls, self.calls = self.calls, {layer.key: [] for layer in self.layers}
        return calls

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes run inside are not recorded (interventions still apply)."""
        calls = self.take()
        try:
            yield
        finally:
            self.calls = calls

    # -- reading (and `drop` rewriting) ------------------------------------------------------------------

    def _read_routing(self, layer: MoELayer, change: LayerIntervention) -> None:
        self._handles.append(
            layer.router.register_forward_hook(
                lambda module, args, output: self._after_router(layer, change, args, output)
            )
        )
        if layer.reads_experts_call:
            self._handles.append(
                layer.block.experts.register_forward_pre_hook(
                    lambda module, args, kwargs: self._before_experts(layer, change, args, kwargs), with_kwargs=True
                )
            )

    def _after_router(self, layer: MoELayer, change: LayerIntervention, args, output):
        if layer.adapter is not None:
            ids, weights = layer.adapter.read(layer.router, args, output)
            logits = layer.adapter.logits(layer.router, args, output) if layer.adapter.logits else None
            self._check_and_store(layer, change, ids, weights, None, logits)
            return None
        logits = router_logits(layer, output)
        if layer.reads_experts_call:
            self._logits[layer.key] = logits  # for the experts call of this forward (a reference, no copy)
            return None
        return self._dense_scores(layer, change, output, logits)

    def _dense_scores(self, layer: MoELayer, change: LayerIntervention, output, logits):
        """Routers that hand the experts dense per-expert scores (Llama4): `(scores [N, E], logits)`."""
        position = next(i for i, item in enumerate(output) if i != layer.logits_index)
        scores = output[position]
        ids = torch.topk(logits, getattr(layer.top_k_owner, "top_k", layer.top_k), dim=-1).indices
        if change.drops:
            kept = drop_weights(ids, scores.gather(1, ids), change.disabled, change.renormalize)
            scores = torch.zeros_like(scores).scatter(1, ids, kept)
            output = (*output[:position], scores, *output[position + 1 :])
        self._check_and_store(layer, change, ids, scores.gather(1, ids), None, logits)
        return output if change.drops else None

    def _before_experts(self, layer: MoELayer, change: LayerIntervention, args, kwargs):
        if len(args) < 3 or args[1].is_floating_point() or not args[2].is_floating_point():
            raise InternalsChanged(
                "transformers",
                f"the experts of {type(layer.block).__name__} are no longer called "
                "as experts(hidden_states, top_k_index, top_k_weights)",
            )
        hidden, index, weights = args[:3]
        logits = self._logits.pop(layer.key, None)
        dropped = None
        if index.dim() == 3:  # a one-hot dispatch mask [N, 1, E] after capacity dropping (Switch)
            dropped = index.sum(dim=(-1, -2)) == 0
            ids = logits.argmax(dim=-1, keepdim=True)  # the chosen expert, also for tokens dropped for capacity
        else:
            ids = index
        rewritten = None
        if change.drops:
            weights = drop_weights(ids, weights, change.disabled, change.renormalize)
            rewritten = ((hidden, index, weights, *args[3:]), kwargs)
        self._check_and_store(layer, change, ids, weights, dropped, logits)
        return rewritten

    def _check_and_store(self, layer, change, ids, weights, dropped, logits) -> None:
        check_selection(layer, change, ids, dropped, logits)
        if self.record:
            self.calls[layer.key].append(
                ForwardRouting(
                    ids=ids.detach().to(torch.int16),
                    weights=weights.detach().to(torch.float16),
                    dropped=None if dropped is None else dropped.detach(),
                    logits=logits.detach().float() if self.keep_logits and logits is not None else None,
                )
            )
