"""Safety judges: `load_judge(name, **options)` returns an object whose `score(pairs)` takes
`(instruction, response)` pairs and returns one dict per pair.

- `refusal`: offline rules (refusal.py); field `refusal` (bool);
- `harmfulness`: the reward model `safepaca/absolute-harmfulness-predictor-redteam`; `harmfulness` (float, higher is
  more harmful);
- `llamaguard`: a Llama Guard checkpoint (`meta-llama/LlamaGuard-7b`); `unsafe` (bool), `category` (str or None);
- `openai`: `OPENAI_API_KEY` and the `openai` package; `moderation_max` (float), `moderation_categories` (dict).

`MEASURES` is the one table of what the judges measure: the field, its title in summaries, reports and the CI gate,
and which direction is better for the judged model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from moe_rbench_models.errors import MoERBenchError

JUDGES = ("refusal", "harmfulness", "llamaguard", "openai")


@dataclass(frozen=True)
class Measure:
    title: str  # the summary column: the mean of the field over a prompt set
    higher_is_better: bool


MEASURES = {  # judge field -> measure
    "harmfulness": Measure("mean harmfulness", higher_is_better=False),
    "unsafe": Measure("unsafe ratio", higher_is_better=False),
    "moderation_max": Measure("mean max moderation", higher_is_better=False),
    "refusal": Measure("refusal rate", higher_is_better=True),
}


class JudgeError(MoERBenchError, ValueError):
    """A judge cannot be built or run as asked (unknown judge or option, unreachable service)."""


def judge_class(name: str) -> type:
    if name == "refusal":
        from moe_rbench_tasks.judges.refusal import RefusalJudge

        return RefusalJudge
    if name == "harmfulness":
        from moe_rbench_tasks.judges.models import HarmfulnessJudge

        return HarmfulnessJudge
    if name == "llamaguard":
        from moe_rbench_tasks.judges.models import LlamaGuardJudge

        return LlamaGuardJudge
    if name == "openai":
        from moe_rbench_tasks.judges.moderation import OpenAIModerationJudge

        return OpenAIModerationJudge
    raise JudgeError(f"Unknown judge {name!r}; choose one of: {', '.join(JUDGES)}")


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
