"""The model's output head as a function of any layer's hidden state (early exit, weak-routing passes).

A causal LM computes `logits = post(lm_head(norm(h_L)))`, where `norm` is the final norm and `post` is
a per-model rescaling (GraniteMoE divides by `logits_scaling`; Gemma soft-caps). `locate_output_head`
finds these parts without a table of module names and proves them on a probe forward pass: the head
applied to `output_hidden_states[L]` (which transformers ties to the normed last hidden state) must
give the model's own logits, and the final norm is the child of the base model whose output is that
state. A model that post-processes its logits in any other way is refused with a clear error, because
early-exit logits would then be on a different scale from the mature ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moe_rbench_models.errors import MoERBenchError


class OutputHeadError(MoERBenchError, ValueError):
    """The output head or final norm of a model could not be located and verified."""


@dataclass
class OutputHead:
    lm_head: nn.Module
    final_norm: nn.Module | None  # None when it was not asked for
    num_layers: int  # L: `output_hidden_states` has L + 1 entries, 0 the embedding output, L the final one
    logits_scaling: float | None = None
    softcap: float | None = None

    def stack(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """Hidden states of several layers (possibly on several devices) as one tensor on the head's device."""
        device = self.lm_head.weight.device
        return torch.stack([h.to(device) for h in hidden])

    def logits(self, hidden: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """float32 logits of hidden states `[..., H]`; `normalize`: pass through the final norm first."""
        if normalize:
            hidden = self.final_norm(hidden)
        logits = self.lm_head(hidden).float()
        if self.logits_scaling is not None:
            logits = logits / self.logits_scaling
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def log_probs(self, hidden: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return torch.log_softmax(self.logits(hidden, normalize), dim=-1)


@torch.no_grad()
def locate_output_head(model: nn.Module, need_final_norm: bool, purpose: str) -> OutputHead:
    """The verified output head of a causal LM; `purpose` names the option in error messages."""
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise OutputHeadError(
            f"{purpose}: {type(model).__name__} has no output embeddings (lm_head) to project hidden states with."
        )
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    base = model.base_model
    probe_ids = (torch.arange(3, 11, device=model.device) % config.vocab_size)[None]
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda module, args, output, name=name: outputs.__setitem__(name, output))
        for name, module in _outside_layer_stacks(base)
    ]
    try:
        output = model(probe_ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    if not output.hidden_states:
        raise OutputHeadError(f"{purpose}: {type(model).__name__} returns no hidden states.")
    final = output.hidden_states[-1]
    head = OutputHead(
        lm_head,
        None,
        len(output.hidden_states) - 1,
        getattr(config, "logits_scaling", None),
        getattr(config, "final_logit_softcapping", None),
    )
    if not _close(head.logits(final), output.logits.float()):
        raise OutputHeadError(
            f"{purpose}: the logits of {type(model).__name__} are not its lm_head applied to the final hidden state "
            "(it post-processes them in a way this code does not know), so early-exit logits would not be comparable."
        )
    if need_final_norm:
        norms = [
            base.get_submodule(name)
            for name, out in outputs.items()
            if isinstance(out, torch.Tensor) and out.shape == final.shape and _close(out, final)
        ]
        if not norms:
            raise OutputHeadError(
                f"{purpose}: the final norm of {type(model).__name__} could not be located (no module "
                "after its layer stack outputs the final hidden state: a post-norm model has none); "
                "use dola_final_norm=false."
            )
        head.final_norm = norms[0]  # the first to finish: a wrapper around the norm, if any, finishes after it
    return head


def _outside_layer_stacks(base: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules of the base model that are not part of a repeated layer stack (an nn.ModuleList)."""
    stacks = [name + "." for name, module in base.named_modules() if isinstance(module, nn.ModuleList)]
    return [
        (name, module)
        for name, module in base.named_modules()
        if name and not isinstance(module, nn.ModuleList) and not any(name.startswith(s) for s in stacks)
    ]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.float(), b.float()
    return a.shape == b.shape and bool(((a - b).abs() <= 1e-3 * (1 + b.abs().max())).all())
