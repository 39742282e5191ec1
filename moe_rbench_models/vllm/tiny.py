"""Tiny random checkpoints that vLLM's CPU backend can run (its attention needs a head size of 64), for the vLLM
worker tests: hidden 128, 2 heads of 64, 4 layers, 8 experts top-2, vocabulary 512, the project's in-process
tokenizer (moe_rbench_models/tiny.py). Router weights are drawn with a large spread so that every token's top-k
has clear margins (float32 differences between vLLM and transformers then cannot flip a selection).
"""

from __future__ import annotations

from pathlib import Path

from moe_rbench_models.errors import OptionError
from moe_rbench_models.tiny import ARCHITECTURES, SEED, tiny_tokenizer

NUM_EXPERTS, TOP_K, NUM_LAYERS = 8, 2, 4
_SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=NUM_LAYERS,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=64,
    num_experts_per_tok=TOP_K,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# model_type -> overrides of moe_rbench_models.tiny.ARCHITECTURES; qwen3_moe renormalises over the kept experts as
# the released Qwen3-MoE checkpoints do, OLMoE does not (its default)
VLLM_ARCHITECTURES = {
    "mixtral": {**_SHAPE, "num_local_experts": NUM_EXPERTS},
    "qwen3_moe": {**_SHAPE, "num_experts": NUM_EXPERTS, "moe_intermediate_size": 64, "norm_topk_prob": True},
    "olmoe": {**_SHAPE, "num_experts": NUM_EXPERTS, "norm_topk_prob": False},
}
ROUTER_STD, OTHER_STD = 0.2, 0.05


def build_vllm_tiny_model(architecture: str, out_dir: str | Path) -> Path:
    """Write a tiny float32 checkpoint of `architecture` (a key of VLLM_ARCHITECTURES) with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if architecture not in VLLM_ARCHITECTURES:
        raise OptionError(f"No vLLM tiny model for {architecture!r}; choose one of: {', '.join(VLLM_ARCHITECTURES)}")
    fields = {**ARCHITECTURES[architecture], **VLLM_ARCHITECTURES[architecture]}
    config = AutoConfig.for_model(architecture, **fields)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                continue
            is_router = name.endswith(".gate.weight") and parameter.shape[0] == NUM_EXPERTS
            parameter.normal_(0, ROUTER_STD if is_router else OTHER_STD)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tiny_tokenizer().save_pretrained(out_dir)
    return out_dir
