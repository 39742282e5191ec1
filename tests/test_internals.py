"""What happens when a library's internals are not what moe_hf relies on: a clear stop, never a number."""

from __future__ import annotations

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from transformers import DynamicCache

from moe_rbench_models import MoEHFLM
from moe_rbench_models.internals import InternalsChanged, check_hflm


def test_a_changed_hflm_method_stops_moe_hf():
    class ChangedHFLM(HFLM):
        def _select_cont_toks(self, logits, contlen=None):  # a future lm-eval without `inplen`
            return logits

    check_hflm(HFLM)
    with pytest.raises(InternalsChanged, match=r"lm_eval 0\.4\.\d+: HFLM\._select_cont_toks has parameters"):
        check_hflm(ChangedHFLM)


def test_scmoe_refuses_a_generation_step_whose_cache_it_cannot_find(tiny_model):
    lm = MoEHFLM(pretrained=str(tiny_model("mixtral")), device="cpu", scmoe_beta=0.5)
    inputs = torch.tensor([lm.tok_encode("Q: What is the capital of France?\nA:")])
    with (
        pytest.raises(InternalsChanged, match="generate called the model without a KV cache object"),
        torch.no_grad(),
        lm._contrast.active("generate"),
    ):
        lm.model(inputs, use_cache=False)
    with pytest.raises(InternalsChanged, match="several KV caches"), torch.no_grad(), lm._contrast.active("generate"):
        lm.model(inputs, None, None, DynamicCache(config=lm.model.config), cache=DynamicCache(config=lm.model.config))
