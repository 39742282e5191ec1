"""Which routing the worker extension captured belongs to which lm-eval request, for `moe_vllm`: the records in
moe_hf's format (routing/requests.py, routing/records.py).

Each vLLM request is one lm-eval row: its routing comes back from `moe_fetch` with the positions the engine
computed. Requests are matched to lm-eval's instances by the tokens submitted, as moe_hf matches its rows:

- scoring (`prompt_logprobs`, lm-eval's loglikelihood path): vLLM routes every prompt position, moe_hf's forward pass
  all but the last (whose next token nothing scores); the record keeps moe_hf's positions, the last one is left out;
- generation: the prompt's positions and one position per generated token but the last (the engine never feeds the
  last token back), exactly moe_hf's; a position the engine computed past the request's end (a step scheduled before
  it knew the request had finished) is not the request's and is left out.

A request whose routing misses one of those positions is an error (`VLLMInternalsChanged`), never a shorter record.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing.records import LayerArrays
from moe_rbench_models.routing.requests import RequestBook, token_digest
from moe_rbench_models.routing.writer import RecordWriter
from moe_rbench_models.vllm.checks import VLLMInternalsChanged


class VLLMCapture(RequestBook):
    def __init__(
        self, writer: RecordWriter, layer_keys: dict[int, str], scoring_window: int, decode: Callable = str
    ) -> None:
        """`layer_keys`: the record key of each MoE layer by decoder layer index (moe_hf's `MoELayer.key`);
        `scoring_window`: the tokens of context + continuation lm-eval's vLLM model submits (max_length - 1)."""
        super().__init__(writer, scoring_window, decode)
        self.layer_keys = layer_keys

    def expect_generation(self, instances, submitted: list[list[int]]) -> None:
        """`submitted`: the prompt tokens lm-eval's vLLM model submits for each instance."""
        for instance, expected, tokens in zip(
            instances, self._expected(instances, "generate_until"), submitted, strict=True
        ):
            samples = instance.args[1].get("n", 1)
            if samples not in (None, 1):
                raise OptionError(
                    f"{instance.task_name}: routing capture follows one generated sequence per request; generation "
                    f"kwargs ask for n={samples}. Drop n, or drop routing_out."
                )
            self._generation.setdefault(token_digest(tokens), []).append(expected)
            if expected is not None:
                self._documents[expected.document_key] += 1

    def record(self, prompt: list[int], generated: list[int] | None, routing: dict) -> None:
        """One vLLM request: its prompt tokens, its generated tokens (None: a scoring request) and what `moe_fetch`
        returned for it."""
        if generated is None:
            arrays = self._arrays(routing, len(prompt) - 1, prompt)
            self.emit_causal_row(np.asarray(prompt[:-1], dtype=np.int64), arrays)
            return
        key = token_digest(prompt)
        waiting = self._generation.get(key)
        if not waiting:
            raise VLLMInternalsChanged(
                f"routing capture: a generation for the prompt {self.decode(prompt)[:80]!r} matches no lm-eval request"
            )
        expected = waiting.pop(0)
        if not waiting:
            del self._generation[key]
        if expected is None:  # a copy lm-eval pads the last request with
            return
        prompt_tokens, generated_tokens = np.asarray(prompt, dtype=np.int64), np.asarray(generated, dtype=np.int64)
        n = len(prompt_tokens)
        arrays = self._arrays(routing, n - 1 + len(generated_tokens), prompt)
        inputs = np.concatenate([prompt_tokens[-1:], generated_tokens[:-1]])
        self._emit(
            expected,
            ("decoder", prompt_tokens[:-1], prompt_tokens[1:], arrays(0, n - 1)),
            ("decoder", inputs, generated_tokens, arrays(n - 1, n - 1 + len(generated_tokens))),
        )

    def _arrays(self, routing: dict, needed: int, prompt: list[int]) -> Callable[[int, int], dict[str, LayerArrays]]:
        """The request's routing of positions 0..needed-1 per record key, as `routing(start, stop)`."""
        positions = np.asarray(routing["positions"], dtype=np.int64)
        if len(positions) < needed or not np.array_equal(positions[:needed], np.arange(needed)):
            raise VLLMInternalsChanged(
                f"routing capture: the request {self.decode(prompt)[:60]!r} needs the routing of positions 0-"
                f"{needed - 1}; the worker captured {len(positions)} positions ({positions[:8].tolist()}...)"
            )
        layers = {
            self.layer_keys[index]: LayerArrays(
                ids=np.asarray(ids, dtype=np.int64)[:needed], weights=np.asarray(weights, dtype=np.float32)[:needed]
            )
            for index, ids, weights in zip(routing["layers"], routing["ids"], routing["weights"], strict=True)
        }

        def span(start: int, stop: int) -> dict[str, LayerArrays]:
            return {key: LayerArrays(a.ids[start:stop], a.weights[start:stop]) for key, a in layers.items()}

        return span
