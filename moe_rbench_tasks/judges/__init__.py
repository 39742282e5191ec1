"""Safety judges: `load_judge(name, **options)` returns an object whose `score(pairs)` takes
`(instruction, response)` pairs and returns one dict per pair. contract.py writes down what every judge is (`Judge`);
the judges that run a transformers model share transformers_judge.py (`TransformersJudge`); adding one:
docs/guides/add-a-judge.md.

- `refusal`: offline, validated out of sample on human labels (refusal.py); `refusal` (bool: a full refusal, the
  model declined the task), `refusal_kind` (full_refusal, partial_refusal, premise_rejection, unable, disclaimer,
  two_sided or compliance), one bool per other kind (`partial_refusal`, `premise_rejection`, ...), `xstest_refusal`
  (a refusal by XSTest's definition), `refusal_reasons`;
- `harmfulness`: the reward model `safepaca/absolute-harmfulness-predictor-redteam`; `harmfulness` (float, higher is
  more harmful);
- `llamaguard`: a Llama Guard checkpoint (`meta-llama/LlamaGuard-7b`); `unsafe` (bool), `category` (str or None);
- `openai`: `OPENAI_API_KEY` and the `openai` package; `moderation_max` (float), `moderation_categories` (dict);
- `wildguard` (learned.py, as are `dna` and `harmbench`): `allenai/wildguard`; `prompt_harmful`, `response_refusal`,
  `response_harmful` (bool or None), `parse_error` (bool);
- `dna`: the Do-Not-Answer action classifier `LibrAI/longformer-action-ro`; `action` (int 0-5), `dna_refusal` (bool);
- `harmbench`: the HarmBench classifier `cais/HarmBench-Llama-2-13b-cls`; `harmbench` (1, 0 or -1), `harmful` (bool
  or None).

`MEASURES` is the one table of what the judges measure: the field, its title in summaries, reports and the CI gate,
which direction is better for the judged model (None: shown, not gated), whether it is a yes/no field (JSON true,
false or null in the judged files) or a number, and, for a yes/no field, the question it answers, so that judges
answering the same question can be checked against each other (`moe-rbench judge --agreement`).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from moe_rbench_models.errors import MoERBenchError

JUDGES = {  # name -> module:class under moe_rbench_tasks.judges
    "refusal": "refusal:RefusalJudge",
    "harmfulness": "models:HarmfulnessJudge",
    "llamaguard": "models:LlamaGuardJudge",
    "openai": "moderation:OpenAIModerationJudge",
    "wildguard": "learned:WildGuardJudge",
    "dna": "learned:DoNotAnswerJudge",
    "harmbench": "learned:HarmBenchJudge",
}


REFUSED, HARMFUL = "refused?", "harmful response?"  # the yes/no questions judges answer


@dataclass(frozen=True)
class Measure:
    title: str  # the summary column: the mean of the field over a prompt set
    higher_is_better: bool | None
    asks: str | None = None  # the question a yes/no field answers
    yes_no: bool = True  # the field is true, false or null (no verdict); else a number or null


MEASURES = {  # judge field -> measure
    "harmfulness": Measure("mean harmfulness", higher_is_better=False, yes_no=False),
    "unsafe": Measure("unsafe ratio", higher_is_better=False, asks=HARMFUL),
    "moderation_max": Measure("mean max moderation", higher_is_better=False, yes_no=False),
    "refusal": Measure("refusal rate", higher_is_better=True, asks=REFUSED),
    "partial_refusal": Measure("partial refusal rate", higher_is_better=None),
    "premise_rejection": Measure("premise rejection rate", higher_is_better=None),
    "unable": Measure("unable-to-answer rate", higher_is_better=None),
    "disclaimer": Measure("answered with a disclaimer rate", higher_is_better=None),
    "two_sided": Measure("two-sided answer rate", higher_is_better=None),
    "compliance": Measure("plain compliance rate", higher_is_better=None),
    "xstest_refusal": Measure("refusal rate (XSTest's definition)", higher_is_better=None),
    "response_harmful": Measure("wildguard harmful response rate", higher_is_better=False, asks=HARMFUL),
    "response_refusal": Measure("wildguard refusal rate", higher_is_better=True, asks=REFUSED),
    "dna_refusal": Measure("dna refusal rate", higher_is_better=True, asks=REFUSED),
    "harmful": Measure("harmbench harmful rate", higher_is_better=False, asks=HARMFUL),
}


class JudgeError(MoERBenchError, ValueError):
    """A judge cannot be built or run as asked (unknown judge or option, unreachable service)."""


def judge_class(name: str) -> type:
    """The judge's class, imported only when asked for (the learned judges load torch and transformers)."""
    if name not in JUDGES:
        raise JudgeError(f"Unknown judge {name!r}; choose one of: {', '.join(JUDGES)}")
    module, _, cls = JUDGES[name].partition(":")
    return getattr(importlib.import_module(f"moe_rbench_tasks.judges.{module}"), cls)


def load_judge(name: str, **options: Any):
    """A judge by name; options go to its constructor (e.g. `model=`, `device=`, `batch_size=`, `base_url=`)."""
    cls = judge_class(name)
    accepted = [parameter for parameter in inspect.signature(cls).parameters if parameter != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise JudgeError(
            f"The {name} judge has no option {', '.join(unknown)}; its options: {', '.join(accepted) or 'none'}"
        )
    return cls(**options)
