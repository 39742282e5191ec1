"""The contrastive-decoding model arguments of `moe_hf`: what each means and its valid values (read, with every
other model argument, by options.py's `MoEOptions`).

DoLa (the reference value of each option in brackets; docs/decoding.md has the recipes):
- `dola_layers`: candidate premature layers, indices into `output_hidden_states` (0 = embedding output,
  L = final layer, which is the mature layer): `paper` (even layers of the top half, MoE-RBench's
  choice), `high` / `low` (the rule of transformers' former `generate(dola_layers=...)`), or a list
  such as `"16,18,20"`;
- `dola_relative_top` (0.1 in generation, 0 in the TruthfulQA-MC script): adaptive plausibility constraint;
- `dola_post_softmax` (false: the TruthfulQA-MC script sums raw differences): log-softmax the contrast;
- `dola_final_norm` (false): pass premature hidden states through the final norm before the head;
- `dola_divergence` (`reference`): the DoLa code's divergence, or the textbook `jsd`;
- `dola_select` (`sequence`): in generation, a premature layer per sequence and step, or one per `batch`
  step as old transformers did. Scoring always picks per position, as the reference does.

SCMoE: `scmoe_beta` (turns it on), `scmoe_weak_k` (1), `scmoe_alpha` (0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_rbench_models.errors import OptionError
from moe_rbench_models.specs import parse_items

DIVERGENCES = ("reference", "jsd")
SELECTIONS = ("sequence", "batch")
LAYER_RULES = ("paper", "high", "low")


@dataclass(frozen=True)
class DolaOptions:
    layers: str | tuple[int, ...]  # read_dola_layers
    relative_top: float = 0.1
    post_softmax: bool = False
    final_norm: bool = False
    divergence: str = "reference"
    select: str = "sequence"

    def __post_init__(self) -> None:
        if not 0 <= self.relative_top <= 1:
            raise OptionError(f"dola_relative_top must be between 0 and 1, got {self.relative_top}")
        if self.divergence not in DIVERGENCES:
            raise OptionError(f"dola_divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        if self.select not in SELECTIONS:
            raise OptionError(f"dola_select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")


@dataclass(frozen=True)
class SelfContrastOptions:
    beta: float
    weak_k: int = 1
    alpha: float = 0.1

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise OptionError(f"scmoe_beta must be positive, got {self.beta}")
        if not 0 <= self.alpha <= 1:
            raise OptionError(f"scmoe_alpha must be between 0 and 1, got {self.alpha}")


LAYERS_EXPECTED = 'paper, high, low or layer numbers such as "16,18,20"'


def read_dola_layers(spec: str | int | list | tuple) -> str | tuple[int, ...]:
    """`dola_layers` read: a rule (`paper`, `high`, `low`) or layer numbers (checked against a model by
    `candidate_layers`)."""
    if isinstance(spec, str) and spec.strip().lower() in LAYER_RULES:
        return spec.strip().lower()
    return tuple(parse_items(spec, "dola_layers", int, expected=LAYERS_EXPECTED))


def candidate_layers(spec: str | int | list | tuple, num_layers: int, tied_embeddings: bool) -> tuple[int, ...]:
    """Premature layer indices (into `output_hidden_states`) named by `dola_layers` for an L-layer model."""
    final = num_layers
    if isinstance(spec, str) and spec.strip().lower() in LAYER_RULES:
        rule = spec.strip().lower()
        if rule == "paper":
            layers = [i for i in range(final // 2, final) if i % 2 == 0]
        elif rule == "high":
            layers = list(range(final // 2, final, 2) if final <= 40 else range(final - 20, final, 2))
        else:
            # transformers skipped the embedding output when embeddings are tied (its early exit is the identity)
            start = 0 if not tied_embeddings else 2 if final > 2 else 1 if final == 2 else 0
            stop = final // 2 if final <= 40 else 20
            layers = [start] if start == final // 2 else list(range(start, stop, 2))
        if not layers:
            raise OptionError(f"dola_layers={rule} selects no layer of this {final}-layer model; list layers instead")
        return tuple(layers)
    layers = read_dola_layers(spec)
    bad = [layer for layer in layers if not 0 <= layer < final]
    if bad:
        raise OptionError(
            f"dola_layers: {bad} out of range; premature layers are 0 (embedding output) to {final - 1} "
            f"(layer {final}, the last, is the mature layer)"
        )
    return tuple(dict.fromkeys(layers))
