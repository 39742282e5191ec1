"""Contrastive decoding inside lm-eval's own scoring and `generate` calls, through two hooks on the model.

While `active("score")` or `active("generate")` is on, a pre-hook on the model's forward asks for the
extra hidden states the method needs (DoLa: the candidate layers only, through transformers'
`output_hidden_states=[indices]`; older versions return all of them, which is slower but the same) and
a post-hook keeps them:
- scoring: the hidden states of the batch stay until lm-eval reads each row's continuation
  (`score_row`); premature projections are computed there, at the scored positions only, in chunks;
- generation: the post-hook replaces the next-token logits by the contrast scores, so that `generate`'s
  own processors (repetition penalty, temperature, top-p) and KV cache work on them unchanged.
SCMoE runs a second, weak-routing pass of the same inputs in the post-hook (with its own KV cache in
generation), invisible to routing capture.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from moe_rbench_models.decoding.contrast import (
    IMPLAUSIBLE_NEXT_TOKEN,
    IMPLAUSIBLE_SCORE,
    dola_scores,
    self_contrast_scores,
)
from moe_rbench_models.decoding.head import OutputHead
from moe_rbench_models.decoding.options import DolaOptions, SelfContrastOptions
from moe_rbench_models.internals import InternalsChanged, cache_length, find_cache, with_cache
from moe_rbench_models.routing.discovery import MoELayer
from moe_rbench_models.routing.interventions import set_top_k

CHUNK = 64  # positions per vocabulary-sized block: bounds memory, and is faster than one large block


class ContrastiveDecoding:
    """Shared mechanics; subclasses say which hidden states they need and how they contrast."""

    one_choice_per_step = False  # generation: one choice for the whole batch at each step (DoLa's `batch`)

    def __init__(self, model: nn.Module, head: OutputHead) -> None:
        self.model, self.head = model, head
        self.mode: str | None = None
        self._inner = False  # a forward pass the method itself runs (SCMoE's weak pass): left alone
        self._hidden: list[torch.Tensor] = []  # scoring: per branch, [batch, positions, H] of the last forward
        self._handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    @contextmanager
    def active(self, mode: str) -> Iterator[None]:
        """Forward passes inside are contrasted: `score` (hidden states kept for `score_row` until the next
        forward or `release`) or `generate` (next-token logits replaced)."""
        self.mode = mode
        try:
            yield
        finally:
            self.mode = None
            self.end()

    def release(self) -> None:
        """Scoring is over: drop the last batch's hidden states."""
        self._hidden = []

    # -- subclass interface ----------------------------------------------------------------------------

    def forward_kwargs(self) -> dict:
        return {}

    def branches(self, module: nn.Module, args: tuple, kwargs: dict, output) -> list[torch.Tensor]:
        """Hidden states `[batch, positions, H]` to contrast with, one per branch."""
        raise NotImplementedError

    def contrast(
        self, mature: torch.Tensor, branch_log_probs: torch.Tensor, implausible_score: float, one_choice: bool = False
    ) -> torch.Tensor:
        """Scores `[P, V]` from mature log-probs `[P, V]` and each branch's `[n, P, V]`."""
        raise NotImplementedError

    def project(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """Log-probs `[n, ..., V]` of each branch's hidden states, in one projection."""
        return self.head.log_probs(self.head.stack(hidden))

    def end(self) -> None:
        """A forward pass (scoring) or a `generate` call is over."""

    def summary(self) -> dict:
        return {}

    # -- hooks -------------------------------------------------------------------------------------------

    def _before(self, module, args, kwargs):
        if self.mode is None or self._inner:
            return None
        return args, {**kwargs, **self.forward_kwargs()}

    def _after(self, module, args, kwargs, output):
        if self.mode is None or self._inner:
            return None
        hidden = self.branches(module, args, kwargs, output)
        if self.mode == "score":
            self._hidden = hidden
            return None
        last = self.project([h[:, -1] for h in hidden])  # [n, batch, V]
        mature = torch.log_softmax(output.logits[:, -1].float(), dim=-1).to(last.device)
        scores = self.contrast(mature, last, IMPLAUSIBLE_NEXT_TOKEN, self.one_choice_per_step)
        output.logits = scores[:, None].to(output.logits.device)
        output.hidden_states = None
        return output

    # -- scoring -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def score_row(self, mature: torch.Tensor, row: int, start: int) -> torch.Tensor:
        """Contrast scores for one row of the last scoring batch: `mature` holds lm-eval's log-probs of the
        positions `start, start + 1, ...` of that row."""
        scores = []
        for offset in range(0, mature.shape[0], CHUNK):
            positions = slice(start + offset, start + min(offset + CHUNK, mature.shape[0]))
            branch = self.project([h[row, positions] for h in self._hidden])
            scores.append(
                self.contrast(mature[offset : offset + CHUNK].float().to(branch.device), branch, IMPLAUSIBLE_SCORE)
            )
        return torch.cat(scores).to(mature.device)


class DoLa(ContrastiveDecoding):
    def __init__(self, model: nn.Module, head: OutputHead, options: DolaOptions, layers: tuple[int, ...]) -> None:
        super().__init__(model, head)
        self.options, self.layers = options, layers
        self.chosen: Counter = Counter()  # premature layer -> positions it was contrasted with

    def forward_kwargs(self) -> dict:
        return {"output_hidden_states": list(self.layers)}

    def branches(self, module, args, kwargs, output) -> list[torch.Tensor]:
        hidden = output.hidden_states
        if hidden is None or len(hidden) != self.head.num_layers + 1 or any(hidden[i] is None for i in self.layers):
            raise InternalsChanged(
                "transformers",
                f"output_hidden_states={list(self.layers)} did not return the "
                f"hidden states of those layers among {self.head.num_layers + 1} entries",
            )
        return [hidden[layer] for layer in self.layers]

    @property
    def one_choice_per_step(self) -> bool:
        return self.options.select == "batch"

    def project(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        return self.head.log_probs(self.head.stack(hidden), normalize=self.options.final_norm)

    def contrast(self, mature, branch_log_probs, implausible_score, one_choice=False):
        scores, choice = dola_scores(
            mature,
            branch_log_probs,
            relative_top=self.options.relative_top,
            post_softmax=self.options.post_softmax,
            divergence_kind=self.options.divergence,
            one_choice=one_choice,
            implausible_score=implausible_score,
        )
        self.chosen.update(self.layers[i] for i in choice.tolist())
        return scores

    def summary(self) -> dict:
        return {
            "method": "dola",
            "candidate_layers": list(self.layers),
            "mature_layer": self.head.num_layers,
            "relative_top": self.options.relative_top,
            "post_softmax": self.options.post_softmax,
            "final_norm": self.options.final_norm,
            "divergence": self.options.divergence,
            "select": self.options.select,
            "chosen_premature_layers": {str(layer): self.chosen[layer] for layer in self.layers},
        }


class SelfContrast(ContrastiveDecoding):
    """SCMoE: the model's routing (strong) against top-`weak_k` routing (weak) of the same model."""

    def __init__(
        self,
        model: nn.Module,
        head: OutputHead,
        options: SelfContrastOptions,
        layers: list[MoELayer],
        routing_hooks=None,
    ) -> None:
        super().__init__(model, head)
        self.options, self.moe_layers, self.routing_hooks = options, layers, routing_hooks
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._strong_cache = self._weak_cache = None

    @contextmanager
    def weak_routing(self) -> Iterator[None]:
        previous = [set_top_k(layer, self.options.weak_k) for layer in self.moe_layers]
        paused = self.routing_hooks.paused() if self.routing_hooks is not None else nullcontext()
        self._inner = True
        try:
            with paused:
                yield
        finally:
            self._inner = False
            for layer, k in zip(self.moe_layers, previous, strict=True):
                set_top_k(layer, k)

    def branches(self, module, args, kwargs, output) -> list[torch.Tensor]:
        weak = {**kwargs, "output_hidden_states": [self.head.num_layers]}
        if self._keeps_logits:
            weak["logits_to_keep"] = 1
        where, strong = find_cache(args, kwargs)
        if strong is not None:  # generation: the weak pass reads and extends its own cache, never generate's
            args, weak = with_cache(args, weak, where, self._weak_cache)
            length = cache_length(strong)
        with self.weak_routing():
            hidden = module(*args, **weak).hidden_states[self.head.num_layers]
        if strong is not None and not cache_length(strong) == cache_length(self._weak_cache) == length:
            raise InternalsChanged(
                "transformers",
                "the weak SCMoE pass did not keep its KV cache apart from "
                "generate's (cache lengths differ after the pass)",
            )
        return [hidden]

    def _before(self, module, args, kwargs):
        # the weak pass keeps a KV cache of its own beside generate's: a fresh one for each new generation
        if self.mode is None or self._inner:
            return None
        where, cache = find_cache(args, kwargs)
        if self.mode == "score" and cache is not None:
            raise InternalsChanged("lm_eval", "a scoring forward pass got a KV cache; SCMoE's weak pass would share it")
        if self.mode == "generate":
            if cache is None:
                raise InternalsChanged(
                    "transformers",
                    "generate called the model without a KV cache object; SCMoE "
                    "cannot keep its weak pass's cache apart",
                )
            if cache is not self._strong_cache:  # a new generation
                if cache_length(cache) != 0:
                    raise InternalsChanged("transformers", "generate started from a non-empty KV cache")
                self._strong_cache, self._weak_cache = cache, copy.deepcopy(cache)
        return super()._before(module, args, kwargs)

    def end(self) -> None:
        self._strong_cache = self._weak_cache = None

    def contrast(self, mature, branch_log_probs, implausible_score, one_choice=False):
        return self_contrast_scores(
            mature,
            branch_log_probs[0],
            beta=self.options.beta,
            relative_top=self.options.alpha,
            implausible_score=implausible_score,
        )

    def summary(self) -> dict:
        return {
            "method": "scmoe",
            "beta": self.options.beta,
            "weak_k": self.options.weak_k,
            "alpha": self.options.alpha,
        }
