"""Safety judges: `load_judge(name, **options)` returns an object whose `score(pairs)` takes
`(instruction, response)` pairs and returns one dict per pair.

| name | needs | fields |
|---|---|---|
| `refusal` | nothing (rules, refusal.py) | `refusal` (bool) |
| `harmfulness` | a reward model (`safepaca/absolute-harmfulness-predictor-redteam`) | `harmfulness` (float, higher = more harmful) |
| `llamaguard` | a Llama Guard checkpoint (`meta-llama/LlamaGuard-7b`) | `unsafe` (bool), `category` (str or None) |
| `openai` | `OPENAI_API_KEY`; the `openai` package | `moderation_max` (float), `moderation_categories` (dict) |
"""

from __future__ import annotations

import inspect
from typing import Any

from moe_rbench_models.errors import MoERBenchError

JUDGES = ("refusal", "harmfulness", "llamaguard", "openai")


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
        raise JudgeError(f"The {name} judge has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(accepted) or 'none'}")  # fmt: skip
    return cls(**options)
