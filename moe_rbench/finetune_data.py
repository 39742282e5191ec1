"""Tokenized training examples of `moe-rbench finetune`'s protocols (documents: moe_rbench_tasks/training.py).

Classification with a head (the reference's protocol): the task's prompt, tokenized as the reference's dataset
classes do (`tokenizer(inputs, truncation=True, max_length=...)`, e.g. `load_adv_datasets.py` l.88: special tokens
added, cut on the right keeping them); the label is the class index. With `truncation="left"` the prompt's last
tokens are kept (lm-eval's left truncation, moe-rbench's previous behaviour).

Instruction tuning, `llama2_chat` (the reference, `alpaca_dataset.py` l.56-95): `example = prompt + " " + output + " "`
encoded, EOS appended, cut to the limit; labels are the example with the first len(encode(prompt)) positions masked
(the prompt encoded on its own, as the reference counts it). `alpaca` (moe-rbench's previous protocol): the prompt's
tokens, then the response encoded without special tokens and EOS, loss on the response and EOS.

An example left without a token to learn (a label word or response cut away) is refused with the limit to raise:
a batch of such examples has no loss to average (NaN).
"""

from __future__ import annotations

from moe_rbench_models.errors import OptionError
from moe_rbench_tasks.training import instruction_examples

IGNORE = -100


def cut(ids: list[int], limit: int, side: str) -> list[int]:
    return ids[:limit] if side == "right" else ids[-limit:]


def classification_features(recipe, tokenizer, task, docs: list[dict]) -> tuple[list[dict], list[str], int]:
    """Tokenized training examples of a classification task's documents, the task's label words (class i first), and
    how many examples were cut at the token limit."""
    limit, side = recipe.token_limit(), recipe.truncation
    label_words = list(task.doc_to_choice(docs[0]))
    features, truncated = [], 0
    for doc in docs:
        context, label = task.doc_to_text(doc), task.doc_to_target(doc)
        if recipe.head == "sequence_classification":
            ids = tokenizer(context)["input_ids"]
            truncated += len(ids) > limit
            ids = _tokenizer_cut(tokenizer, context, limit) if side == "right" else ids[-limit:]  # left: lm-eval's
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": label})
            continue
        continuation = task.config.target_delimiter + task.doc_to_choice(doc)[label]
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        ids, labels = context_ids + continuation_ids, [IGNORE] * len(context_ids) + continuation_ids
        truncated += len(ids) > limit
        features.append(_checked(cut(ids, limit, side), cut(labels, limit, side), limit, context))
    return features, label_words, truncated


def _tokenizer_cut(tokenizer, text: str, limit: int) -> list[int]:
    """`tokenizer(text, truncation=True, max_length=limit)` cutting on the right whatever the tokenizer's default."""
    side, tokenizer.truncation_side = tokenizer.truncation_side, "right"
    try:
        return tokenizer(text, truncation=True, max_length=limit)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-eval's causal models split them (`LM._encode_pair`): trailing spaces
    of the context move to the continuation, the whole is encoded once and split after the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return whole[: len(context_ids)], whole[len(context_ids) :]


def _checked(ids: list[int], labels: list[int], limit: int, prompt: str) -> dict:
    if all(label == IGNORE for label in labels):
        raise OptionError(
            f"An example is longer than the token limit {limit} and keeps no token to learn after truncation: "
            f"{prompt[:80]!r}...; raise --max_length (or use --truncation left)"
        )
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def instruction_features(recipe, tokenizer, data_dir, limit: int | None) -> tuple[list[dict], dict]:
    """Tokenized Alpaca examples and counts of what was read, removed, held out, added and cut."""
    examples, counts = instruction_examples(
        data_dir, recipe.keep_safety_samples, recipe.safety_samples, recipe.prompt_format, recipe.alpaca_holdout
    )
    examples = examples[:limit] if limit else examples
    max_tokens, side = recipe.token_limit(), recipe.truncation
    features, truncated = [], 0
    for prompt, response in examples:
        if recipe.prompt_format == "llama2_chat":
            ids = tokenizer.encode(prompt + " " + response + " ") + [tokenizer.eos_token_id]
            masked = min(len(tokenizer.encode(prompt)), len(ids))
            labels = [IGNORE] * masked + ids[masked:]
        else:
            prompt_ids = tokenizer(prompt)["input_ids"]
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids, labels = prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids
        truncated += len(ids) > max_tokens
        features.append(_checked(cut(ids, max_tokens, side), cut(labels, max_tokens, side), max_tokens, prompt))
    return features, {**counts, "used": len(features), "cut_at_max_length": truncated}
