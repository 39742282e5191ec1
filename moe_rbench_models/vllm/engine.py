"""`RoutedLLM`: the vLLM `LLM` as `moe_vllm` hands it to lm-eval's vLLM model.

lm-eval's `VLLM._model_generate` builds the requests' `SamplingParams` and calls `self.model.generate(prompts,
sampling_params=..., ...)` (lm_eval/models/vllm_causallms.py). Every request passes through here on its way: each
gets the run's MoE settings in `SamplingParams.extra_args` (settings.py) under a tag of its own, and with capture its
routing is fetched from the worker (`moe_fetch`) once the call returns and handed to the capture with the request's
tokens. Everything else is the LLM's own (attribute access goes through to it).
"""

from __future__ import annotations

import secrets
from typing import Any

from moe_rbench_models.vllm.capture import VLLMCapture
from moe_rbench_models.vllm.checks import VLLMInternalsChanged
from moe_rbench_models.vllm.settings import KEY


class RoutedLLM:
    def __init__(self, llm, settings: dict[str, Any], capture: VLLMCapture | None) -> None:
        """`settings`: the run's interventions as extra_args settings (`top_k`, `force`, `disable`; may be empty)."""
        self.llm, self.settings, self.capture = llm, settings, capture
        self._prefix, self._requests = secrets.token_hex(4), 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    def generate(self, prompts, sampling_params=None, **kwargs):
        if sampling_params is None:
            raise VLLMInternalsChanged("lm-eval called LLM.generate without sampling_params; moe_vllm tags each one")
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise VLLMInternalsChanged(f"LLM.generate got {len(prompts)} prompts and {len(params)} sampling params")
        tags = [self._new_tag() for _ in prompts]
        tagged = [self._tagged(p, tag) for p, tag in zip(params, tags, strict=True)]
        outputs = self.llm.generate(prompts, sampling_params=tagged, **kwargs)
        if self.capture is not None:
            self._record(prompts, params, tags, outputs)
        return outputs

    def _new_tag(self) -> str:
        self._requests += 1
        return f"moe_vllm-{self._prefix}-{self._requests}"

    def _tagged(self, params, tag: str):
        settings = {**self.settings, "tag": tag, "capture": self.capture is not None}
        tagged = params.clone()
        tagged.extra_args = {**(params.extra_args or {}), KEY: settings}
        return tagged

    def _record(self, prompts, params, tags: list[str], outputs) -> None:
        routing = self.llm.collective_rpc("moe_fetch", args=(tags,))[0]
        for prompt, sampling, tag, output in zip(prompts, params, tags, outputs, strict=True):
            tokens = list(prompt["prompt_token_ids"])
            if list(output.prompt_token_ids) != tokens:
                raise VLLMInternalsChanged("LLM.generate returned its outputs in another order than its prompts")
            scoring = sampling.prompt_logprobs is not None
            generated = None if scoring else list(output.outputs[0].token_ids)
            self.capture.record(tokens, generated, routing[tag])
