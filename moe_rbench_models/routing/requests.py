"""Which captured routing belongs to which lm-eval request.

HFLM sorts, batches, pads and (for multiple choice) shares one forward pass between requests. Rather
than follow its internals, rows are matched to requests by content: a digest of the token sequence a row
processed is the key under which its requests wait (16 bytes per request, whatever its length; lm-eval's own
token lists are referenced, never copied). `moe_hf` calls, in order, `expect_*` (before HFLM runs the requests),
`begin_forward` / `end_forward` around each forward pass, `row` each time HFLM takes one row of a batch apart
(`_select_cont_toks`), all inside `call()`, which checks at the end that every request was recorded and, on
an error, leaves no state behind. A row that matches no request stops the run at that batch.

`RequestBook` is the part that does not depend on how the model runs: what each request waits for, the check at the
end of a call, and how a request's spans become a record. `RequestCapture` feeds it from moe_hf's hooks and HFLM's
batches; moe_vllm's capture (moe_rbench_models/vllm/capture.py) from the worker extension's per-request routing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from moe_rbench_models.errors import OptionError
from moe_rbench_models.internals import InternalsChanged
from moe_rbench_models.routing.discovery import MoELayer
from moe_rbench_models.routing.hooks import ForwardRouting, RoutingHooks
from moe_rbench_models.routing.records import LayerArrays
from moe_rbench_models.routing.writer import RecordWriter


@dataclass
class _Expected:
    request_type: str
    task: str | None
    doc_id: int | None
    request_index: int
    repeat: int
    arguments: tuple = ()  # the request's texts (lm-eval's own tuple, not a copy), to name it in errors
    continuation_length: int = 0
    last_token: int = -1  # the continuation's last token: a causal row's inputs stop before it
    # loglikelihood_rolling: a document waits for one continuation span per window; each window points to it
    spans: list = field(default_factory=list)
    document: _Expected | None = None
    window: int = 0
    doc_key: str | None = None  # the document's `id` field: aligns documents across tasks for tracing

    @property
    def document_key(self) -> tuple:
        return self.task, self.doc_id, self.request_type

    def describe(self) -> str:
        return f"task {self.task}, document {self.doc_id}, request {self.request_index}"


def token_digest(*parts) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for tokens in parts:
        array = np.asarray(tokens, dtype=np.int64)
        digest.update(len(array).to_bytes(8, "little") + array.tobytes())
    return digest.digest()


class RequestBook:
    """What each lm-eval request of a call waits for, and its records once its routing is known."""

    def __init__(self, writer: RecordWriter, scoring_window: int, decode: Callable[[list[int]], str] = str) -> None:
        """`scoring_window`: how many tokens of a loglikelihood request's context + continuation the model is given
        (lm-eval truncates on the left); `decode`: token ids to text, for error messages."""
        self.writer, self.scoring_window, self.decode = writer, scoring_window, decode
        self.seq2seq = False
        self._reset()

    def _reset(self) -> None:
        self._waiting: dict[bytes, list[_Expected]] = {}
        self._recorded: set[bytes] = set()  # rows already routed: HFLM may process a shared row again
        self._documents: Counter = Counter()  # requests of a document not yet recorded
        self._contexts: dict[tuple, dict[bytes, list | None]] = {}  # a document's shared context span
        self._generation: dict[str | bytes, list[_Expected | None]] = {}

    def pending_requests(self) -> int:
        return sum(len(waiting) for waiting in self._waiting.values()) + sum(
            e is not None for waiting in self._generation.values() for e in waiting
        )

    @contextmanager
    def call(self) -> Iterator[None]:
        """One lm-eval request call (`loglikelihood`, ...): on success every request must have been recorded and
        the records are written; on an error nothing of the call stays behind."""
        try:
            yield
        except BaseException:
            self._reset()
            raise
        missing = [expected for waiting in self._waiting.values() for expected in waiting]
        missing += [e for waiting in self._generation.values() for e in waiting if e is not None]
        self._reset()
        self.writer.finish_call()
        if missing:
            raise InternalsChanged(
                "lm_eval",
                f"routing capture matched no forward pass to {len(missing)} request(s) "
                f"({'; '.join(e.describe() for e in missing[:3])})",
            )

    # -- what to wait for --------------------------------------------------------------------------------

    @staticmethod
    def _expected(instances, request_type: str) -> list[_Expected | None]:
        """One entry per instance; None for the copies lm-eval pads the last request with on several ranks."""
        seen: Counter = Counter()
        expected = []
        for instance in instances:
            repeat = seen[id(instance)]
            seen[id(instance)] += 1
            doc = instance.doc if isinstance(instance.doc, dict) else {}
            key = None if doc.get("id") is None else str(doc["id"])
            expected.append(
                None
                if repeat >= (instance.repeats or 1)
                else _Expected(
                    request_type, instance.task_name, instance.doc_id, instance.idx, repeat, instance.args, doc_key=key
                )
            )
        return expected

    def _row_key(self, context: list[int], continuation: list[int]) -> bytes:
        if self.seq2seq:
            return token_digest(context[-self.max_length :], continuation[-self.max_length :])
        return token_digest((context + continuation)[-self.scoring_window :][:-1])

    def _wait(self, expected: _Expected, context: list[int], continuation: list[int]) -> None:
        expected.continuation_length, expected.last_token = len(continuation), int(continuation[-1])
        self._waiting.setdefault(self._row_key(context, continuation), []).append(expected)
        self._documents[(expected.document or expected).document_key] += 1

    def expect_scoring(self, instances, token_requests) -> None:
        if len(instances) != len(token_requests):
            raise InternalsChanged(
                "lm_eval",
                f"HFLM.loglikelihood turned {len(instances)} requests into {len(token_requests)} token requests",
            )
        for expected, (_, context, continuation) in zip(
            self._expected(instances, "loglikelihood"), token_requests, strict=True
        ):
            if expected is not None:
                self._wait(expected, context, continuation)

    def expect_rolling(self, instances, windows: Callable[[str], list[tuple[list[int], list[int]]]]) -> None:
        """`windows(text)`: the (context, continuation) token windows HFLM scores for a document."""
        for instance, expected in zip(instances, self._expected(instances, "loglikelihood_rolling"), strict=True):
            if expected is None:
                continue
            document_windows = windows(instance.args[0])
            expected.spans = [None] * len(document_windows)
            for index, (context, continuation) in enumerate(document_windows):
                window = _Expected(
                    expected.request_type,
                    expected.task,
                    expected.doc_id,
                    expected.request_index,
                    expected.repeat,
                    expected.arguments,
                    document=expected,
                    window=index,
                )
                self._wait(window, context, continuation)

    def _take(self, key: bytes, tokens: np.ndarray) -> list[_Expected]:
        """The requests waiting for a row; an error at once for a row no request waits for."""
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            self._recorded.add(key)
            return waiting
        if key in self._recorded:
            return []
        text = self.decode(tokens.tolist())
        probe = text.strip()[:30]
        guesses = list(
            dict.fromkeys(
                e.describe()
                for waiting in self._waiting.values()
                for e in waiting
                if probe and probe in "".join(a for a in e.arguments if isinstance(a, str))
            )
        )[:3]
        raise InternalsChanged(
            "lm_eval",
            f"routing capture: a scoring row ({len(tokens)} tokens: {text[:80]!r}) "
            f"matches no request{'; it looks like ' + ', '.join(guesses) if guesses else ''}",
        )

    def emit_causal_row(self, tokens: np.ndarray, routing: Callable[[int, int], dict[str, LayerArrays]]) -> None:
        """A causal model's scoring row: `tokens`, the inputs of one forward pass (context + continuation without
        its last token), and `routing(start, stop)`, the routing of its positions start..stop-1 per layer key; every
        request waiting for the row is recorded (context and continuation spans)."""
        for expected in self._take(token_digest(tokens), tokens):
            split = len(tokens) - expected.continuation_length
            targets = np.append(tokens[split + 1 :], expected.last_token)
            context = ("decoder", tokens[:split], tokens[1 : split + 1], routing(0, split))
            continuation = ("decoder", tokens[split:], targets, routing(split, len(tokens)))
            self._emit(expected, context, continuation)

    def _emit(self, expected: _Expected, context: tuple, continuation: tuple) -> None:
        if expected.document is not None:  # a rolling window: the record waits for the document's last window
            document = expected.document
            document.spans[expected.window] = self.writer.add_span(document.task, *continuation)
            if all(span is not None for span in document.spans):
                self.writer.add_record(
                    document.request_type,
                    document.task,
                    document.doc_id,
                    document.request_index,
                    document.repeat,
                    [],
                    document.spans,
                    document.doc_key,
                )
            self._done(document.document_key)
            return
        side, tokens, _, _ = context
        contexts = self._contexts.setdefault(expected.document_key, {})
        context_key = token_digest(tokens) + side.encode()
        if context_key not in contexts:
            contexts[context_key] = self.writer.add_span(expected.task, *context) if len(tokens) else None
        context_span = contexts[context_key]
        continuation_span = self.writer.add_span(expected.task, *continuation) if len(continuation[1]) else None
        self.writer.add_record(
            expected.request_type,
            expected.task,
            expected.doc_id,
            expected.request_index,
            expected.repeat,
            [context_span] if context_span else [],
            [continuation_span] if continuation_span else [],
            expected.doc_key,
        )
        self._done(expected.document_key)

    def _done(self, document: tuple) -> None:
        """One request of `document` recorded; its shared context is forgotten with its last request."""
        self._documents[document] -= 1
        if self._documents[document] <= 0:
            del self._documents[document]
            self._contexts.pop(document, None)


class CapturedScoring:
    """lm-eval's scoring calls with routing capture, shared by moe_hf and moe_vllm (mixed in before their lm-eval base
    class). `self._capture` is the model's `RequestBook` (None: no capture); `loglikelihood` hands its instances to
    `_loglikelihood_tokens`, which expects the token requests they became; `loglikelihood_rolling` expects the windows
    the model's `_rolling_windows(text)` gives."""

    _scoring_instances = None

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if self._capture is None:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        self._scoring_instances = requests
        try:
            with self._capture.call():
                return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._scoring_instances = None

    def _loglikelihood_tokens(self, requests, *args, **kwargs):
        if self._capture is not None and self._scoring_instances is not None:
            self._capture.expect_scoring(self._scoring_instances, requests)
        return super()._loglikelihood_tokens(requests, *args, **kwargs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        if self._capture is None:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        with self._capture.call():
            self._capture.expect_rolling(requests, self._rolling_windows)
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)


class RequestCapture(RequestBook):
    """moe_hf's capture: routing read by the hooks, per forward pass, matched to HFLM's batches and rows."""

    def __init__(
        self,
        hooks: RoutingHooks,
        writer: RecordWriter,
        layers: list[MoELayer],
        max_length: int,
        decoder_start: int | None = None,
        decode: Callable[[list[int]], str] = str,
    ) -> None:
        """`decoder_start`: the decoder start token of an encoder-decoder model (None: causal model); `decode`:
        token ids to text, for error messages. HFLM scores the last `max_length + 1` tokens of a request."""
        super().__init__(writer, max_length + 1, decode)
        self.hooks, self.max_length = hooks, max_length
        self.seq2seq, self.decoder_start = decoder_start is not None, decoder_start
        self.keys = {side: [layer.key for layer in layers if layer.side == side] for side in ("encoder", "decoder")}
        self.batch_contexts: list[str] | None = None
        self._batch: dict | None = None

    def expect_generation(self, instances) -> None:
        for instance, expected in zip(instances, self._expected(instances, "generate_until"), strict=True):
            kwargs = instance.args[1]
            if int(kwargs.get("num_beams", 1) or 1) > 1 or int(kwargs.get("num_return_sequences", 1) or 1) > 1:
                raise OptionError(
                    f"{instance.task_name}: routing capture follows one generated sequence per request; generation "
                    f"kwargs {json.dumps(kwargs, default=str)} ask for beam search or several sequences. Use greedy "
                    "or sampled generation, or drop routing_out."
                )
            self._generation.setdefault(instance.args[0], []).append(expected)
            if expected is not None:
                self._documents[expected.document_key] += 1

    # -- forward passes ----------------------------------------------------------------------------------

    def begin_forward(self) -> None:
        self.hooks.take()

    def end_forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None):
        """One scoring forward: each layer's routing as [batch, positions, ...] arrays."""
        calls = self.hooks.take()
        batch = inputs.shape[0]
        self._batch = {
            "inputs": inputs.cpu().numpy(),
            "mask": None if attention_mask is None else attention_mask.cpu().numpy().astype(bool),
            "labels": None if labels is None else labels.cpu().numpy(),
            "layers": {key: _batched(forward[0], batch) for key, forward in calls.items()},
        }

    def row(self, r: int, continuation_length: int, input_length: int | None) -> None:
        """HFLM takes row `r` of the last batch apart; route it to the requests waiting for it."""
        batch = self._batch
        if self.seq2seq:
            encoder_length = int(batch["mask"][r].sum())
            encoder_tokens = batch["inputs"][r, :encoder_length]
            decoder_tokens = batch["labels"][r, :continuation_length]
            context = (
                "encoder",
                encoder_tokens,
                _no_targets(encoder_tokens),
                self._slice(batch, "encoder", r, 0, encoder_length),
            )
            continuation = (
                "decoder",
                self._decoder_inputs(decoder_tokens),
                decoder_tokens,
                self._slice(batch, "decoder", r, 0, continuation_length),
            )
            for expected in self._take(token_digest(encoder_tokens, decoder_tokens), encoder_tokens):
                self._emit(expected, context, continuation)
            return
        tokens = batch["inputs"][r, :input_length]
        self.emit_causal_row(tokens, lambda start, stop: self._slice(batch, "decoder", r, start, stop))

    def _decoder_inputs(self, targets: np.ndarray) -> np.ndarray:
        return np.concatenate([[self.decoder_start], targets[:-1]]).astype(targets.dtype)[: len(targets)]

    def end_generation(
        self,
        context: torch.Tensor,
        attention_mask: torch.Tensor,
        sequences: torch.Tensor,
        eos_ids: set[int],
        pad_id: int | None,
    ) -> None:
        """One `generate` call: a prefill (or encoder) pass, then one pass per generated token."""
        calls = self.hooks.take()
        batch = context.shape[0]
        mask = attention_mask.cpu().numpy().astype(bool)
        prompt_tokens = context.cpu().numpy()
        sequences = sequences.cpu().numpy()
        encoder = {key: _batched(calls[key][0], batch) for key in self.keys["encoder"]}
        # decoder side: [batch, passes] with the prefill's last position first (causal) or the start token (seq2seq)
        decoder, prefill = {}, {}
        for key in self.keys["decoder"]:
            passes = calls[key] if self.seq2seq else calls[key][1:]
            steps = [_batched(forward, batch) for forward in passes]
            if not self.seq2seq:
                prefill[key] = _batched(calls[key][0], batch)
                steps.insert(0, _take_positions(prefill[key], slice(-1, None)))
            decoder[key] = _concat_positions(steps)
        generated = sequences[:, 1:] if self.seq2seq else sequences[:, context.shape[1] :]
        if self.batch_contexts is None or len(self.batch_contexts) != batch:
            raise InternalsChanged(
                "lm_eval", "HFLM.generate_until did not encode the batch it generates with tok_batch_encode"
            )
        for r, prompt in enumerate(self.batch_contexts):
            waiting = self._generation.get(prompt)
            if not waiting:
                raise InternalsChanged(
                    "lm_eval", f"routing capture: a generation for the prompt {prompt[:80]!r} matches no request"
                )
            expected = waiting.pop(0)
            if not waiting:
                del self._generation[prompt]
            if expected is None:  # a copy lm-eval pads the last request with
                continue
            length = _generated_length(generated[r], eos_ids, pad_id)
            start = int(np.argmax(mask[r])) if mask[r].any() else mask.shape[1]
            prompt_r, generated_r = prompt_tokens[r, start:], generated[r, :length]
            if self.seq2seq:
                context_part = ("encoder", prompt_r, _no_targets(prompt_r), _row(encoder, r, start, mask.shape[1]))
                inputs = self._decoder_inputs(generated_r)
            else:
                context_part = ("decoder", prompt_r[:-1], prompt_r[1:], _row(prefill, r, start, mask.shape[1] - 1))
                inputs = np.concatenate([prompt_r[-1:], generated_r[:-1]]).astype(prompt_r.dtype)[:length]
            self._emit(expected, context_part, ("decoder", inputs, generated_r, _row(decoder, r, 0, length)))

    def _slice(self, batch: dict, side: str, r: int, start: int, stop: int) -> dict[str, LayerArrays]:
        return _row({key: batch["layers"][key] for key in self.keys[side]}, r, start, stop)


def _no_targets(tokens: np.ndarray) -> np.ndarray:
    return np.full(len(tokens), -1, dtype=np.int32)


def _batched(forward: ForwardRouting, batch: int) -> LayerArrays:
    """One forward call's routing reshaped from [N, ...] to [batch, N / batch, ...] numpy arrays."""

    def shape(tensor):
        return None if tensor is None else tensor.cpu().numpy().reshape(batch, -1, *tensor.shape[1:])

    return LayerArrays(
        ids=shape(forward.ids),
        weights=shape(forward.weights),
        dropped=shape(forward.dropped),
        logits=shape(forward.logits),
    )


def _take_positions(arrays: LayerArrays, positions: slice) -> LayerArrays:
    return LayerArrays(
        *(None if a is None else a[:, positions] for a in (arrays.ids, arrays.weights, arrays.dropped, arrays.logits))
    )


def _concat_positions(parts: list[LayerArrays]) -> LayerArrays:
    def join(name):
        values = [getattr(part, name) for part in parts]
        return None if values[0] is None else np.concatenate(values, axis=1)

    return LayerArrays(join("ids"), join("weights"), join("dropped"), join("logits"))


def _row(layers: dict[str, LayerArrays], r: int, start: int, stop: int) -> dict[str, LayerArrays]:
    return {
        key: LayerArrays(
            *(
                None if a is None else a[r, start:stop]
                for a in (arrays.ids, arrays.weights, arrays.dropped, arrays.logits)
            )
        )
        for key, arrays in layers.items()
    }


def _generated_length(tokens: np.ndarray, eos_ids: set[int], pad_id: int | None) -> int:
    """Tokens the model produced: up to the first end-of-sequence token, else without trailing padding
    (`generate` pads a sequence once it is finished)."""
    for index, token in enumerate(tokens.tolist()):
        if token in eos_ids:
            return index + 1
    length = len(tokens)
    while length and pad_id is not None and tokens[length - 1] == pad_id:
        length -= 1
    return length
