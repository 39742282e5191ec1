"""The routing edits the worker applies to one step's flattened tokens, as moe_hf applies them per sequence
(moe_rbench_models/routing/interventions.py: `steered_scores`, `set_top_k`), and the capture order.

Pure torch on `[tokens, ...]` tensors; the rows of each request are a slice of the step's tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe_rbench_models.vllm.settings import LayerEdit

STEERMOE_MARGIN = 0.01  # as interventions.STEERMOE_MARGIN: forced <- the token's highest log-probability + 0.01


def steered_logits(router_logits: torch.Tensor, edits: list[tuple[slice, LayerEdit]]) -> torch.Tensor:
    """Router logits `[N, E]` with each request's rows edited as moe_hf's `steered_scores` edits them: with forced
    experts the rows become log-probabilities (`log_softmax` in the logits' own dtype, SteerMoE's edit) and a forced
    expert gets the row's highest + 0.01; disabled experts (disable_mode=reroute) get the dtype's lowest value, so
    that the next-best expert takes their slot. The router then scores, selects and normalises as it always does."""
    edited = router_logits.clone()
    lowest = torch.finfo(edited.dtype).min
    for rows, edit in edits:
        scores = F.log_softmax(edited[rows], dim=-1) if edit.forced else edited[rows]
        if edit.forced:
            top = scores.amax(-1, keepdim=True)
            scores[:, list(edit.forced)] = (top + STEERMOE_MARGIN).expand(-1, len(edit.forced))
        if edit.removed:
            scores[:, list(edit.removed)] = lowest
        edited[rows] = scores
    return edited


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
    which sorts; vLLM's CPU top-k does not), on the CPU: ids int32 and weights float32 `[N, K]`."""
    order = torch.argsort(weights.float(), dim=-1, descending=True, stable=True)
    ids = torch.gather(ids.long(), 1, order).to(torch.int32)
    return ids.cpu(), torch.gather(weights.float(), 1, order).cpu()
