"""`moe_hf`: lm-eval's Hugging Face model with Mixture-of-Experts routing exposed.

With no MoE option set it is `--model hf`, request for request: the same model loading, batching,
caching and scores. It accepts every `hf` model argument.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from moe_rbench_models.routing import describe_moe, find_moe_layers


@register_model("moe_hf")
class MoEHFLM(HFLM):
    def __init__(self, pretrained: Any, data_dir: str | None = None, **kwargs: Any) -> None:
        """`data_dir`: directory of the benchmarks' original release files, read by the moe_rbench tasks
        (model arguments reach them as task metadata); taken here so that it does not reach
        `from_pretrained`. Every other argument is `hf`'s."""
        super().__init__(pretrained=pretrained, **kwargs)
        self.data_dir = data_dir
        self.moe_layers = find_moe_layers(self.model)

    def get_model_info(self) -> dict[str, Any]:
        return {**super().get_model_info(), "moe": describe_moe(self.model, self.moe_layers)}
