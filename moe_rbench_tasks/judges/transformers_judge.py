"""The one home of what the judges that run a transformers model locally share (harmfulness and llamaguard in
models.py; wildguard, dna and harmbench in learned.py): the device, batching under `torch.no_grad`
(`TransformersJudge`), and the loading and greedy decoding of a decoder judge.

Each loads by Hugging Face id or local path (`model=`), runs batched (`batch_size=`; decoders with left padding)
and puts the model on `device` (default: CUDA when available).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch


def judge_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TransformersJudge(ABC):
    """A judge (contract.py) that runs a transformers model: `score` hands `score_batch` the pairs `batch_size` at a
    time, under `torch.no_grad`. A subclass sets `name` and `fields`, loads its model in `__init__` (options `model`,
    `device`, `batch_size`, ...) and sets `self.batch_size`."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]
    batch_size: int

    @torch.no_grad()
    def score(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        verdicts = []
        for batch in batches(pairs, self.batch_size):
            verdicts += self.score_batch(batch)
        return verdicts

    @abstractmethod
    def score_batch(self, batch: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The verdicts of at most `batch_size` pairs, one per pair, in order."""


def decoder_tokenizer(model: str):
    """A decoder judge's tokenizer: left padding, right truncation, a pad token (the EOS if it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left", truncation_side="right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def causal_lm(model: str, device: torch.device, dtype: str):
    """A decoder judge's model on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()


def generate(tokenizer, model, prompts: list[str], max_new_tokens: int, add_special_tokens: bool = True) -> list[str]:
    """Greedy continuations of `prompts`, decoded without the prompt and without special tokens. Raw-text prompts
    take their BOS from the tokenizer (`add_special_tokens=True`); prompts from a chat template carry it already."""
    inputs = tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=add_special_tokens).to(
        model.device
    )
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
