"""Every registered `moe_rbench_*` task keeps the invariants lm-eval's own task tests check (lm-evaluation-harness
tests/test_tasks.py, `TestBaseTasks`), on the fixture data: documents and splits, text/target/choice types, the
delimiter rule (no prompt ending in whitespace when the target delimiter is whitespace), few-shot contexts and
request construction."""

from __future__ import annotations

from itertools import islice

import pytest
from helpers import FIXTURE_DATA
from lm_eval.tasks import get_task_dict

import moe_rbench_tasks
from moe_rbench_tasks.families import FAMILIES, SAFETY
from moe_rbench_tasks.fewshot import FewShotError
from moe_rbench_tasks.task import MoERBenchTask

LIMIT = 10  # lm-eval's `limit` fixture
TASK_NAMES = sorted(name for name in moe_rbench_tasks.task_manager(include_defaults=False).all_subtasks)
ZERO_SHOT = {*SAFETY.tasks, "moe_rbench_truthfulqa_mc"}  # they refuse demonstrations (moe_rbench_tasks/fewshot.py)


@pytest.fixture(scope="module")
def tasks() -> dict:
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    return get_task_dict(TASK_NAMES, manager)  # lm-eval's own test builds its tasks the same way


def evaluated_docs(task) -> list[dict]:
    """lm-eval's choice: the first `LIMIT` test documents, else validation documents."""
    return list(islice(task.test_docs() if task.has_test_docs() else task.validation_docs(), LIMIT))


def test_every_family_task_is_registered_and_of_our_task_class(tasks):
    assert sorted(task for family in FAMILIES for task in family.tasks) == TASK_NAMES
    assert all(type(task) is MoERBenchTask for task in tasks.values())  # --cache_requests keyed by the documents


@pytest.mark.parametrize("name", TASK_NAMES)
def test_documents_and_splits(tasks, name):
    task = tasks[name]
    assert task.dataset is not None
    for kind in ("training", "validation", "test"):
        has_docs = getattr(task, f"has_{kind}_docs")()
        assert has_docs in (True, False)
        if has_docs:
            assert task.config[f"{kind}_split"] is not None
    assert task.should_decontaminate() in (True, False)
    if task.should_decontaminate():
        assert task.config.doc_to_decontamination_query is not None
    assert evaluated_docs(task)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_text_target_and_choices(tasks, name):
    task = tasks[name]
    assert not task.multiple_input
    delimiters = {task.config.target_delimiter, task.fewshot_cfg.target_delimiter}  # prompt's, demonstrations'
    for doc in evaluated_docs(task):
        text = task.doc_to_text(doc)
        assert isinstance(text, str)
        for delimiter in delimiters:
            if delimiter.isspace() and text:
                assert not text[-1].isspace(), (
                    f"{name}: the prompt ends in whitespace and the delimiter is {delimiter!r}"
                )
        target = task.doc_to_target(doc)
        if task.config.output_type == "multiple_choice":
            choices = task.doc_to_choice(doc)
            assert isinstance(choices, list) and choices and all(isinstance(choice, str) for choice in choices)
            assert isinstance(target, (int, str))
            assert target in choices if isinstance(target, str) else 0 <= target < len(choices)
        else:
            assert isinstance(target, (int, str, list))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_requests_are_built(tasks, name):
    task = tasks[name]
    docs = evaluated_docs(task)
    requests = [task.construct_requests(doc=doc, ctx=task.doc_to_text(doc)) for doc in docs]
    assert len(requests) == len(docs)
    task.build_all_requests(rank=1, limit=LIMIT, world_size=1)  # lm-eval's own call
    assert task.instances
    task.build_all_requests(rank=0, limit=2, world_size=1)
    assert {instance.doc_id for instance in task.instances} == {0, 1}
    assert all(isinstance(instance.arguments[0], str) for instance in task.instances)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_few_shot_contexts(tasks, name):
    task = tasks[name]
    doc = evaluated_docs(task)[0]
    assert task.fewshot_context(doc, num_fewshot=0).endswith(task.doc_to_text(doc))  # after any description
    if name in ZERO_SHOT:
        with pytest.raises(FewShotError, match="--num_fewshot 0"):
            task.fewshot_context(doc, num_fewshot=2)
        return
    context = task.fewshot_context(doc, num_fewshot=2)
    assert isinstance(context, str)
    assert context.endswith(task.doc_to_text(doc))
    assert context.count(task.config.fewshot_delimiter) >= 2
