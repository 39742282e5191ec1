"""Few-shot samplers for tasks whose protocol has no demonstration set of its own.

lm-eval draws `--num_fewshot` demonstrations from a task's `fewshot_split`; a task without one falls back to
its evaluated documents, so the model would be shown other test questions with their answers. Tasks that have
no disjoint demonstration set name one of these samplers (`fewshot_config.sampler`) with an empty pool
(`fewshot_config.samples`), and `--num_fewshot N > 0` stops with the reason instead.
"""

from __future__ import annotations

from lm_eval.api.samplers import ContextSampler

from moe_rbench_models.errors import MoERBenchError


class FewShotError(MoERBenchError, ValueError):
    """--num_fewshot asked for demonstrations a task does not have."""


def no_demonstrations() -> list[dict]:
    """The few-shot pool of a zero-shot task: empty, never the evaluated documents."""
    return []


class _Refusing(ContextSampler):
    reason = ""

    def sample(self, n: int, eval_doc=None, df=None, **kwargs):
        if n > 0:
            raise FewShotError(f"{self.reason} Run it with --num_fewshot 0 (the default).")
        return []


class BossDemonstrations(ContextSampler):
    """lm-eval's sampler, with the file to add when a BOSS suite's demonstration set is missing."""

    def sample(self, n: int, eval_doc=None, df=None, **kwargs):
        if n > 0 and not (df or self.df):
            raise FewShotError(
                "BOSS few-shot draws demonstrations from the train.tsv of the suite's ID set (<data dir>/boss/amazon/, "
                "boss/mnli/ or boss/civil_comments/train.tsv of the BOSS bundle), which was not found. Add it, or run "
                "with --num_fewshot 0."
            )
        return super().sample(n, eval_doc=eval_doc, df=df, **kwargs)


class PrimerIsTheFewShot(_Refusing):
    """TruthfulQA (DoLa protocol): every prompt already starts with the six-shot QA primer."""

    reason = (
        "moe_rbench_truthfulqa_mc: the DoLa protocol's six-shot QA primer is already the few-shot context of "
        "every prompt, and TruthfulQA has no other split to draw demonstrations from."
    )


class ZeroShotPrompts(_Refusing):
    """Safety prompt sets: instructions to answer, with no reference answers to demonstrate."""

    reason = (
        "The moe_rbench_safety tasks are zero-shot: their prompt sets hold harmful instructions without "
        "reference answers, so there is nothing to demonstrate."
    )
