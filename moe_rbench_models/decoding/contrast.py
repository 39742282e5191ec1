"""The contrast scores themselves: DoLa (Chuang et al. 2023) and MoE self-contrast (SCMoE, Shi et al. 2024).

Pure functions on log-probabilities `[positions, vocab]`; the hooks that feed them live in runtime.py.
Where the reference implementations disagree, the choice is an option (see options.py).
"""

from __future__ import annotations

import math

import torch

# Score of an implausible token (adaptive plausibility constraint): the DoLa TruthfulQA scripts use
# -1000 when scoring, so that a sum stays finite; generation removes the token outright.
IMPLAUSIBLE_SCORE = -1000.0
IMPLAUSIBLE_NEXT_TOKEN = float("-inf")


def implausible(mature: torch.Tensor, relative_top: float) -> torch.Tensor:
    """Tokens whose mature probability is below `relative_top` times the best one's (at least one token kept)."""
    return mature < mature.max(dim=-1, keepdim=True).values + math.log(relative_top)


def divergence(mature: torch.Tensor, premature: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between the mature distribution `[P, V]` and each candidate's `[n, P, V]`: `[n, P]`.

    `reference`: the DoLa code's "JS divergence", `0.5 * (KL(M||p) + KL(M||q))` with `M = (p + q) / 2`,
    averaged over the vocabulary (F.kl_div's argument order reverses the textbook direction);
    `jsd`: the Jensen-Shannon divergence `0.5 * (KL(p||M) + KL(q||M))`.
    """
    p, q = mature.exp(), premature.exp()
    average = 0.5 * (p + q)
    log_average = average.log()
    if kind == "reference":  # F.kl_div(x, M) = M * (log M - x); both terms share log M
        return 0.5 * (average * (2 * log_average - mature - premature)).mean(-1)
    return 0.5 * ((p * (mature - log_average)).sum(-1) + (q * (premature - log_average)).sum(-1))


def dola_scores(
    mature: torch.Tensor,
    premature: torch.Tensor,
    *,
    relative_top: float,
    post_softmax: bool,
    divergence_kind: str,
    one_choice: bool,
    implausible_score: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DoLa scores `[P, V]` and the chosen candidate per position `[P]`.

    `mature`: log-probs of the final layer `[P, V]`; `premature`: of each candidate layer `[n, P, V]`.
    Each position contrasts with the candidate farthest from the mature distribution; `one_choice`:
    one candidate for all P positions (the batch-wide pick of old transformers' generation).
    """
    if premature.shape[0] == 1:
        choice = torch.zeros(mature.shape[0], dtype=torch.long, device=mature.device)
    else:
        distance = divergence(mature, premature, divergence_kind)
        if one_choice:
            distance = distance.mean(dim=1, keepdim=True).expand_as(distance)
        choice = distance.argmax(dim=0)
    base = premature[choice, torch.arange(mature.shape[0], device=mature.device)]
    scores = mature - base
    if post_softmax:
        scores = scores.log_softmax(dim=-1)
    if relative_top > 0:
        scores = scores.masked_fill(implausible(mature, relative_top), implausible_score)
    return scores, choice


def self_contrast_scores(
    strong: torch.Tensor, weak: torch.Tensor, *, beta: float, relative_top: float, implausible_score: float
) -> torch.Tensor:
    """SCMoE: `(1 + beta) log p_strong - beta log p_weak`, restricted to the strong routing's plausible tokens."""
    scores = (1 + beta) * strong - beta * weak
    if relative_top > 0:
        scores = scores.masked_fill(implausible(strong, relative_top), implausible_score)
    return scores
