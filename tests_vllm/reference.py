"""An independent reference for the worker: transformers with every MoE router's forward replaced by a
re-implementation (logits, the interventions, softmax, top-k, renormalisation as the config says), written
from moe_hf's documented semantics (moe_rbench_models/routing/interventions.py), not from the worker's code."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

MARGIN = 0.01


def load(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def _routers(model) -> dict[int, torch.nn.Module]:
    found = {}
    for name, module in model.named_modules():
        match = re.fullmatch(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate", name)
        if match:
            found[int(match.group(1))] = module
    return found


def _int_keys(mapping) -> dict[int, object]:
    return {int(key): value for key, value in (mapping or {}).items()}


def _edited(logits: torch.Tensor, forced, removed) -> torch.Tensor:
    """SteerMoE's activation (log_softmax, forced <- row max + 0.01) and moe_hf's reroute (lowest value)."""
    scores = F.log_softmax(logits, dim=-1) if forced else logits.clone()
    top = scores.amax(-1, keepdim=True)
    for expert in forced or ():
        scores[:, expert] = top[:, 0] + MARGIN
    for expert in removed or ():
        scores[:, expert] = torch.finfo(scores.dtype).min
    return scores


def _router_forward(router, layer: int, settings: dict, renormalize: bool):
    top_k = settings.get("top_k")
    k = top_k if isinstance(top_k, int) else _int_keys(top_k).get(layer, router.top_k)
    forced = _int_keys(settings.get("force")).get(layer)
    removed = _int_keys(settings.get("disable")).get(layer)

    def forward(hidden_states):
        hidden_states = hidden_states.reshape(-1, router.hidden_dim)
        logits = F.linear(hidden_states, router.weight)
        probs = torch.softmax(_edited(logits, forced, removed).float(), dim=-1)
        values, indices = torch.topk(probs, k, dim=-1)
        if renormalize:
            values = values / values.sum(-1, keepdim=True)
        return logits, values.to(logits.dtype), indices

    return forward


def run(model, token_ids: list[int], settings: dict):
    """Log-probabilities `[T, V]` and, per decoder layer index, ids and weights `[T, k]` (highest weight first)."""
    renormalize = bool(getattr(model.config, "norm_topk_prob", True))  # Mixtral always renormalises
    routed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    saved = []
    for layer, router in _routers(model).items():
        saved.append((router, router.forward))
        inner = _router_forward(router, layer, settings, renormalize)

        def forward(hidden_states, inner=inner, layer=layer):
            output = inner(hidden_states)
            routed[layer] = (output[2], output[1])
            return output

        router.forward = forward
    try:
        with torch.no_grad():
            logits = model(torch.tensor([token_ids])).logits[0]
    finally:
        for router, original in saved:
            router.forward = original
    return torch.log_softmax(logits.float(), -1), routed


def greedy(model, token_ids: list[int], steps: int, settings: dict) -> list[int]:
    ids = list(token_ids)
    for _ in range(steps):
        log_probs, _ = run(model, ids, settings)
        ids.append(int(log_probs[-1].argmax()))
    return ids[len(token_ids) :]
