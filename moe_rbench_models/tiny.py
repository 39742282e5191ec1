"""Tiny random-weight checkpoints of real architectures, built offline from their configs.

They exist so that the whole pipeline (lm-eval CLI, `moe_hf`, routing, tasks) can run in seconds with no
download: `moe-rbench tiny-model mixtral DIR` writes a checkpoint that loads by path like a real one.
Scores are meaningless (the weights are random); shapes, code paths and routing mechanics are real.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from moe_rbench_models.errors import OptionError

VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2
SEED = 0

_DECODER = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
_ENCODER_DECODER = dict(
    vocab_size=VOCAB_SIZE,
    d_model=32,
    d_ff=64,
    d_kv=8,
    num_heads=4,
    num_layers=2,
    num_decoder_layers=2,
    decoder_start_token_id=0,
    tie_word_embeddings=False,  # untied: greedy generation does not just echo its input
)

# model_type -> config overrides; every MoE here has 2 MoE layers of 4 experts (DeepSeek-V3: 8), top-2
# (Llama4 top-1; Switch top-1, one encoder and one decoder MoE layer).
ARCHITECTURES: dict[str, dict] = {
    "mixtral": {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        **_DECODER,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
        "decoder_sparse_step": 1,
    },
    "qwen3_moe": {**_DECODER, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 8},
    "olmoe": {**_DECODER, "num_experts": 4, "num_experts_per_tok": 2},
    "deepseek_v3": {
        **_DECODER,
        "num_key_value_heads": 4,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "n_shared_experts": 1,
        "n_group": 2,
        "topk_group": 1,
        "first_k_dense_replace": 0,
        "kv_lora_rank": 16,
        "q_lora_rank": None,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 8,
    },
    "gpt_oss": {
        **_DECODER,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "head_dim": 8,
        "sliding_window": 64,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    },
    "phimoe": {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2},
    "granitemoe": {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2},
    "jamba": {
        **_DECODER,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "expert_layer_period": 1,
        "expert_layer_offset": 0,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "mamba_d_state": 4,
        "mamba_dt_rank": 4,
    },
    "llama4_text": {
        **_DECODER,
        "num_local_experts": 4,
        "num_experts_per_tok": 1,
        "intermediate_size_mlp": 64,
        "head_dim": 8,
        "interleave_moe_layer_step": 1,
    },
    "dbrx": {
        "vocab_size": VOCAB_SIZE,
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 2,
        "max_seq_len": 1024,
        "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2},
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
    },
    "switch_transformers": {
        **_ENCODER_DECODER,
        "num_experts": 4,
        "num_sparse_encoder_layers": 1,
        "num_sparse_decoder_layers": 1,
        "expert_capacity": 64,
    },
    "llama": dict(_DECODER),
    "t5": dict(_ENCODER_DECODER),
}
SEQ2SEQ = {"switch_transformers", "t5"}

_CORPUS = [
    "Given the sentences: it 's a charming and often affecting journey .",
    "what is the sentiment of this sentence ? negative positive neutral",
    "Is this true ? The man is playing a guitar on stage. implies A person plays music. Answer: Yes Maybe No",
    "Given the two sentences: (1) A dog runs in the park. (2) An "
    "animal is outside. Does the first sentence entail the second ?",
    "All in all , the sentiment was positive . All in all , the toxicity was benign .",
    "Q: What is the capital of France? A: The capital of France is Paris.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: Explain why the sky is blue. ### Response: Sunlight scatters off molecules in the air.",
    "Thou art a most excellent and noble film, full of wit and gentle humour, my lord.",
    "lol this movie was sooo bad #fail, worst two hours of my life tbh",
    "And it came to pass that the story was told with great sorrow and little joy.",
    "My darling, this tender tale of love made my heart sing under the silver moon.",
    "The quick brown fox jumps over the lazy dog 0123456789 times, again and again.",
]


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in-process (no download), wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=pad, bos_token=bos, eos_token=eos)


def build_tiny_model(
    architecture: str,
    out_dir: str | Path,
    head: str = "causal_lm",
    tokenizer: str | Path | None = None,
    **config_overrides,
) -> Path:
    """Write a tiny random-weight checkpoint of `architecture` (a key of ARCHITECTURES) to `out_dir`;
    `config_overrides` change config fields (e.g. `expert_capacity=2` for Switch); `head=
    "sequence_classification"` gives a `*ForSequenceClassification` checkpoint (set `num_labels`); `tokenizer`:
    a tokenizer directory to use (its vocabulary sets the embedding size) instead of the built-in one."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    if architecture not in ARCHITECTURES:
        raise OptionError(f"Unknown tiny architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
    if tokenizer is None:
        tokenizer = tiny_tokenizer()
        ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        named = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
        ids = {**named, "eos_token_id": tokenizer.eos_token_id, "vocab_size": len(tokenizer)}
    config = AutoConfig.for_model(architecture, **{**ARCHITECTURES[architecture], **ids, **config_overrides})
    auto_class = AutoModelForSeq2SeqLM if architecture in SEQ2SEQ else AutoModelForCausalLM
    if head == "sequence_classification":
        auto_class = AutoModelForSequenceClassification
    elif head != "causal_lm":
        raise OptionError(f"head must be causal_lm or sequence_classification, got {head!r}")
    torch.manual_seed(SEED)
    model = auto_class.from_config(config)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.update(**{key: value for key, value in ids.items() if key != "vocab_size"})
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
