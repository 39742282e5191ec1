"""Few-shot never shows an evaluated document: every `moe_rbench_*` task's demonstration pool, as lm-eval
builds it, against the task's evaluated documents (fixture data, and the release files when present)."""

from __future__ import annotations

import pytest
from helpers import FIXTURE_DATA

import moe_rbench_tasks
from moe_rbench_tasks.hallucination import load_nq_open

ZERO_SHOT = {
    "moe_rbench_truthfulqa_mc",
    "moe_rbench_safety_malicious",
    "moe_rbench_safety_cona",
    "moe_rbench_safety_controversial",
    "moe_rbench_safety_dna",
    "moe_rbench_xstest",
}
NOT_CONTENT = {"id", "style", "pair_id", "label"}  # fields that differ between copies of one document


def content(doc: dict) -> tuple:
    """What a document shows the model: its text fields."""
    return tuple(
        sorted((key, value) for key, value in doc.items() if isinstance(value, str) and key not in NOT_CONTENT)
    )


def all_tasks(data_dir, include_boss: bool = True) -> dict:
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(data_dir)})
    names = sorted(
        name
        for name in manager.all_subtasks
        if name.startswith("moe_rbench_") and name not in manager.all_groups and (include_boss or "_boss_" not in name)
    )
    return manager.load(names)["tasks"]


def check_pools(tasks: dict) -> None:
    for name, task in tasks.items():
        pool = list(task.fewshot_docs() or [])
        evaluated = {content(doc) for doc in task.eval_docs}
        leaked = [doc for doc in pool if content(doc) in evaluated]
        assert not leaked, f"{name}: {len(leaked)} of its {len(pool)} demonstrations are evaluated documents"
        if name in ZERO_SHOT:
            assert pool == []
            with pytest.raises(ValueError, match="--num_fewshot 0"):
                task.fewshot_context(task.eval_docs[0], num_fewshot=1)
        else:
            assert pool, f"{name}: no demonstrations"


def test_no_task_draws_demonstrations_from_its_evaluated_documents():
    tasks = all_tasks(FIXTURE_DATA)
    assert len(tasks) == 36
    check_pools(tasks)


def test_no_task_draws_demonstrations_from_its_evaluated_documents_in_the_release_files(real_data_dir):
    check_pools(all_tasks(real_data_dir, include_boss=False))  # BOSS is not in the release files here


def test_nq_open_demonstrations_are_efficientqa_questions_disjoint_from_nq_open(real_data_dir):
    dataset = load_nq_open(data_dir=str(real_data_dir))
    assert (len(dataset["validation"]), len(dataset["train"])) == (3610, 1800)
    normalised = [
        {question.strip().lower() for question in dataset[split]["question"]} for split in ("validation", "train")
    ]
    assert not normalised[0] & normalised[1]


def test_truthfulqa_refuses_few_shot_through_the_cli(tiny_model, tmp_path):
    import lm_eval

    from moe_rbench_models import MoEHFLM

    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    with pytest.raises(ValueError, match="six-shot QA primer is already the few-shot context"):
        lm_eval.simple_evaluate(
            model=MoEHFLM(pretrained=str(tiny_model("llama")), device="cpu"),
            tasks=["moe_rbench_truthfulqa_mc"],
            task_manager=manager,
            num_fewshot=2,
            limit=2,
        )
