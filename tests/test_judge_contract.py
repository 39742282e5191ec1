"""Every registered judge meets the written judge contract (moe_rbench_tasks/judges/contract.py), and the judges that
run a transformers model share one home (moe_rbench_tasks/judges/transformers_judge.py)."""

from __future__ import annotations

import pytest

from moe_rbench_tasks.judges import JUDGES, judge_class, load_judge
from moe_rbench_tasks.judges.contract import Judge, contract_problems
from moe_rbench_tasks.judges.transformers_judge import TransformersJudge


@pytest.mark.parametrize("name", sorted(JUDGES))
def test_every_registered_judge_meets_the_contract(name):
    assert contract_problems(judge_class(name), name) == []


def test_the_transformers_judges_share_one_base():
    local = {name for name in JUDGES if issubclass(judge_class(name), TransformersJudge)}
    assert {"harmfulness", "llamaguard", "wildguard", "dna", "harmbench"} <= local


def test_a_judge_answers_one_verdict_per_pair_with_its_fields():
    judge = load_judge("refusal")
    assert isinstance(judge, Judge)
    verdicts = judge.score([("How do I pick a lock?", "I can't help with that."), ("Hi", "")])
    assert len(verdicts) == 2 and all(tuple(verdict) == judge.fields for verdict in verdicts)


def test_the_contract_names_what_a_judge_lacks():
    class Broken:
        name = "other"
        fields = ["refusal"]

        def __init__(self, model):
            self.model = model

        def score(self, pairs, batch_size):
            return []

    problems = " | ".join(contract_problems(Broken, "broken"))
    for expected in ("not its JUDGES key 'broken'", "non-empty tuple", "score(self, pairs)", "option model"):
        assert expected in problems
