"""`moe_hf`: lm-eval's Hugging Face model with Mixture-of-Experts routing exposed.

With no MoE option set it is `--model hf`, request for request: the same model loading, batching,
caching and scores. It accepts every `hf` model argument, and:

- `routing_out=DIR`: record the routing of every request (see moe_rbench_models/routing/records.py;
  read it with `moe_rbench_models.routing.load_records(DIR)`); `routing_logits=true` also keeps logits;
  `routing_overwrite=true` lets a run replace the records an earlier run left in DIR (routing/writer.py);
- `top_k=K` or `top_k="LAYER:K;..."`: experts per token; `disable_experts="*:3,7"` or `"12:5;13:0"` with
  `disable_mode=reroute|steermoe|drop` and `drop_renormalize=true|false`; `force_experts="12:5;13:0"`: experts
  always among the selected, SteerMoE's way (see routing/interventions.py);
- `dola_layers=paper|high|low|"16,18,20"` and the other `dola_*` options: DoLa; `scmoe_beta=BETA` with
  `scmoe_weak_k`, `scmoe_alpha`: MoE self-contrast (see decoding/options.py). Both change the scores
  of loglikelihood requests and the tokens `generate_until` produces;
- `head=sequence_classification` with `label_map=...`: score multiple-choice tasks through a fine-tuned
  classification head, the paper's protocol (see classifier.py).

Every argument is read and checked once, before the model loads, by options.py (`MoEOptions`): yes/no arguments
(`routing_logits`, `routing_overwrite`, `drop_renormalize`, `dola_post_softmax`, `dola_final_norm`, and hf's own such
as `trust_remote_code`) take true/false, 1/0 or yes/no in any case; any other value is refused (lm-eval passes other
words on as strings, which would read as true). Every refusal is an `OptionError`.

The routing parts of a run (interventions, hooks, capture, writer) are one `RoutingSession` (routing/session.py);
this class only tells it what lm-eval does, through a few HFLM methods that see one request batch or one row of it
(`_model_call`, `_select_cont_toks`, `tok_batch_encode`, `_model_generate`). `close()` (or leaving a `with`
block) publishes the routing records and removes every hook, restoring the model; lm-eval's `simple_evaluate`
publishes them when it asks for the model's info, after the evaluation.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Any

import transformers
from lm_eval import utils
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from moe_rbench_models.classifier import ClassifierScoring, refuse
from moe_rbench_models.decoding import build_contrastive_decoding
from moe_rbench_models.errors import OptionError
from moe_rbench_models.internals import InternalsChanged, check_hflm
from moe_rbench_models.options import MoEOptions, refuse_request_cache
from moe_rbench_models.routing.discovery import describe_moe, find_moe_layers
from moe_rbench_models.routing.requests import CapturedScoring
from moe_rbench_models.routing.session import RoutingSession


@register_model("moe_hf")
class MoEHFLM(CapturedScoring, HFLM):
    def __init__(self, pretrained: Any, **model_args: Any) -> None:
        """`model_args`: hf's and moe_hf's own (module docstring), read and checked by `MoEOptions.parse` before the
        model is loaded. `data_dir`: directory of the benchmarks' original release files, read by the moe_rbench
        tasks (model arguments reach them as task metadata); taken here so that it does not reach `from_pretrained`."""
        check_hflm(HFLM)
        options = MoEOptions.parse(model_args)
        if options.classifier_head:
            self.AUTO_MODEL_CLASS = transformers.AutoModelForSequenceClassification
        super().__init__(pretrained=pretrained, **options.hf_arguments)
        self.options, self.data_dir = options, options.data_dir
        self._classifier = ClassifierScoring(self, options.label_map) if options.classifier_head else None
        self.moe_layers = find_moe_layers(self.model)
        self._routing = RoutingSession(self, self.moe_layers, options)
        self._scoring_instances = None
        try:
            self._contrast = build_contrastive_decoding(
                self.model, self.backend, self.moe_layers, options.decoding, self._routing.hooks
            )
        except BaseException:
            self._routing.abandon()  # `pretrained` may be the caller's model object: no hooks stay on it
            raise
        self._row = 0  # the row of the last scoring batch that HFLM reads next
        self._batch_rows = 0  # rows of the last scoring batch

    @property
    def moe_options(self) -> dict[str, Any]:
        return self.options.moe_options

    @property
    def routing_plan(self) -> dict:
        """The routing interventions per layer key (`LayerIntervention`s; empty when none is asked for)."""
        return self._routing.plan

    @property
    def _capture(self):
        return self._routing.capture

    def set_cache_hook(self, cache_hook) -> None:
        refuse_request_cache(cache_hook, self.moe_options, "moe_hf")
        super().set_cache_hook(cache_hook)

    def get_model_info(self) -> dict[str, Any]:
        # lm-eval asks once the evaluation has finished: the routing records are published here
        moe = {**describe_moe(self.model, self.moe_layers), **self._routing.report()}
        if self._contrast is not None:
            moe["decoding"] = self._contrast.summary()
        if self._classifier is not None:
            moe["head"] = "sequence_classification"
        recipe = getattr(self.model.config, "moe_rbench_recipe", None)  # written by `moe-rbench finetune`
        if recipe is not None:
            moe["recipe"] = recipe
        return {**super().get_model_info(), "moe": moe}

    # -- loglikelihood and loglikelihood_rolling -----------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if self._classifier is not None:
            return self._classifier.loglikelihood(requests)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)  # CapturedScoring: with routing capture

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        if self._classifier is not None:
            refuse("loglikelihood_rolling")
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """The windows HFLM.loglikelihood_rolling scores, made with the same lm-eval functions."""
        windows = utils.get_rolling_token_windows(
            token_list=self.tok_encode(text),
            prefix_token=self.prefix_token_id,
            max_seq_len=self.max_length,
            context_len=1,
        )
        return [utils.make_disjoint_window(window) for window in windows]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            if self._contrast is not None:
                self._contrast.release()

    def _model_call(self, inps, attn_mask=None, labels=None):
        if self._row not in (0, self._batch_rows):  # a forward with no rows read is HFLM's batch-size probe
            raise InternalsChanged(
                "lm_eval",
                f"HFLM read {self._row} of the {self._batch_rows} rows of a scoring batch before the next forward pass",
            )
        self._row, self._batch_rows = 0, inps.shape[0]
        if self._capture is not None:
            self._capture.begin_forward()
        with self._contrasting("score"):
            logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        if self._capture is not None:
            self._capture.end_forward(inps, attn_mask, labels)
        return logits

    def _select_cont_toks(self, logits, contlen=None, inplen=None):
        row, self._row = self._row, self._row + 1
        if row >= self._batch_rows:
            raise InternalsChanged("lm_eval", f"HFLM read row {row} of a scoring batch of {self._batch_rows} rows")
        if self._capture is not None:
            self._capture.row(row, contlen, inplen)
        selected = super()._select_cont_toks(logits, contlen=contlen, inplen=inplen)
        if self._contrast is not None:  # lm-eval gathers the continuation's scores from what is returned here
            selected = self._contrast.score_row(selected, row, inplen - contlen)
        return selected

    # -- generate_until -----------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False):
        if self._classifier is not None:
            refuse("generate_until")
        if self._capture is None:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        # one set of generation kwargs at a time (HFLM batches within such groups anyway), so that a
        # generated row belongs to the request with its context
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        results: list[str | None] = [None] * len(requests)
        with self._capture.call():
            for indices in groups.values():
                group = [requests[index] for index in indices]
                self._capture.expect_generation(group)
                for index, text in zip(indices, super().generate_until(group, disable_tqdm=disable_tqdm), strict=True):
                    results[index] = text
        return results

    def tok_batch_encode(self, strings, *args, **kwargs):
        if self._capture is not None:
            self._capture.batch_contexts = list(strings)
        return super().tok_batch_encode(strings, *args, **kwargs)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        if self._capture is not None and generation_kwargs.get("attention_mask") is None:
            raise OptionError(
                "_model_generate was called without attention_mask: routing capture (routing_out) needs the prompts' "
                "attention mask to tell their tokens from padding. Pass attention_mask= with the context, as "
                "lm-eval's generate_until does, or run without routing_out."
            )
        if self._capture is not None:
            self._capture.begin_forward()
        with self._contrasting("generate"):
            sequences = super()._model_generate(context, max_length, stop, **generation_kwargs)
        if self._capture is None:
            return sequences
        eos = generation_kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        self._capture.end_generation(
            context,
            generation_kwargs["attention_mask"],
            sequences,
            eos_ids | {self.tokenizer.eos_token_id},
            self.tokenizer.pad_token_id,
        )
        return sequences

    def close(self) -> None:
        """Publish the routing records (main process) and remove every hook, restoring the model's routers."""
        self._routing.close()
        if self._contrast is not None:
            self._contrast.remove()
            self._contrast = None

    def __enter__(self) -> MoEHFLM:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self._routing.discard()  # a failed evaluation publishes nothing: the earlier records stay
        self.close()

    def _contrasting(self, mode: str):
        return self._contrast.active(mode) if self._contrast is not None else nullcontext()
