"""The routing edits the worker applies to one step's flattened tokens, as moe_hf applies them per sequence
(moe_rbench_models/routing/interventions.py: `steered_scores`, `set_top_k`), and the capture order.

Pure torch on `[tokens, ...]` tensors; the rows of each request are a slice of the step's tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from moe_rbench_models.routing.interventions import steered_scores
from moe_rbench_models.vllm.settings import LayerEdit


def steered_logits(router_logits: torch.Tensor, edits: list[tuple[slice, LayerEdit]]) -> torch.Tensor:
    """Router logits `[N, E]` with each request's rows edited by moe_hf's own `steered_scores`, in the space moe_hf
    picks for a softmax router (`interventions.steer_router`): with forced experts the rows become log-probabilities
    (SteerMoE's edit) and a forced expert gets the row's highest + 0.01; disabled experts (disable_mode=reroute) get
    the dtype's lowest value, so that the next-best expert takes their slot. The router then scores, selects and
    normalises as it always does."""
    edited = router_logits.clone()
    for rows, edit in edits:
        space = "log_softmax" if edit.forced else "logits"
        edited[rows] = steered_scores(
            edited[rows], _mask(edit.forced, edited), None, _mask(edit.removed, edited), space
        )
    return edited


def _mask(experts: tuple[int, ...], logits: torch.Tensor) -> torch.Tensor | None:
    """`[E]` booleans marking `experts` (None when there are none), as `steered_scores` takes them."""
    if not experts:
        return None
    mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    mask[list(experts)] = True
    return mask


def limited_weights(weights: torch.Tensor, kept: torch.Tensor, renormalize: bool) -> torch.Tensor:
    """Top-k weights `[N, K]` with each token keeping only its `kept[N]` best slots (0: all K): the others' weights
    are zero (the kernels' buffers stay `[N, K]`), and where the router renormalises (Mixtral, Qwen3-MoE) the kept
    weights are renormalised over the kept experts, as the router does when its k is `kept` (moe_hf's `top_k`);
    where it does not (OLMoE) they keep their softmax probabilities."""
    order = torch.argsort(weights, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(weights.shape[1], device=weights.device).expand_as(order)
    )
    limited = kept[:, None] > 0
    keep = ~limited | (rank < kept[:, None])
    result = weights * keep
    if renormalize:
        result = torch.where(limited, result / result.sum(-1, keepdim=True), result)
    return result.to(weights.dtype)


def sorted_by_weight(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's experts by weight, highest first (the order of moe_hf's records: the router's `torch.topk`,
    which sorts; vLLM's CPU top-k does not), on the tensors' device: ids int32 and weights float32 `[N, K]`."""
    order = torch.argsort(weights.float(), dim=-1, descending=True, stable=True)
    return torch.gather(ids.long(), 1, order).to(torch.int32), torch.gather(weights.float(), 1, order)


def to_host(routed: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One step's routing of every layer copied to the host in one transfer per kind (one device synchronisation
    per step, not one per layer): `{layer: (ids [N, K] int32, weights [N, K] float32)}` as numpy arrays."""
    layers = list(routed)
    ids = torch.stack([routed[layer][0] for layer in layers]).cpu().numpy()
    weights = torch.stack([routed[layer][1] for layer in layers]).cpu().numpy()
    return {layer: (ids[i], weights[i]) for i, layer in enumerate(layers)}
