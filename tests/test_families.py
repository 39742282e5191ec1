"""The family registry is the one declaration of task and set names: the YAML files are written from it."""

from __future__ import annotations

from pathlib import Path

from moe_rbench_tasks import TASKS_DIR, task_manager
from moe_rbench_tasks.families import FAMILIES, UMBRELLAS, yaml_files


def test_the_task_and_group_files_are_those_the_registry_writes():
    expected = yaml_files()
    for relative, text in expected.items():
        assert (Path(TASKS_DIR) / relative).read_text(encoding="utf-8") == text, (
            f"task_yamls/{relative} differs from families.py; run `python -m moe_rbench_tasks.families`"
        )
    written = {path.relative_to(TASKS_DIR).as_posix() for path in Path(TASKS_DIR).rglob("*.yaml")}
    assert written == set(expected), f"YAML files the registry does not write: {sorted(written - set(expected))}"


def test_lm_eval_indexes_every_registered_task_and_group():
    manager = task_manager(include_defaults=False)
    for family in FAMILIES:
        assert set(family.tasks) <= set(manager.all_tasks), family.key
        assert family.group in manager.all_groups and (
            family.ood_group is None or family.ood_group in manager.all_groups
        )
    assert set(UMBRELLAS) <= set(manager.all_groups)
