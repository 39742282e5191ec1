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

from typing import Any

JUDGES = ("refusal", "harmfulness", "llamaguard", "openai")


def load_judge(name: str, **options: Any):
    """A judge by name; options go to its constructor (e.g. `model=`, `device=`, `batch_size=`, `base_url=`)."""
    if name == "refusal":
        from moe_rbench_tasks.judges.refusal import RefusalJudge

        return RefusalJudge(**options)
    if name == "harmfulness":
        from moe_rbench_tasks.judges.models import HarmfulnessJudge

        return HarmfulnessJudge(**options)
    if name == "llamaguard":
        from moe_rbench_tasks.judges.models import LlamaGuardJudge

        return LlamaGuardJudge(**options)
    if name == "openai":
        from moe_rbench_tasks.judges.moderation import OpenAIModerationJudge

        return OpenAIModerationJudge(**options)
    raise ValueError(f"Unknown judge {name!r}; choose one of: {', '.join(JUDGES)}")
