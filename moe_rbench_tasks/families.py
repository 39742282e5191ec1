"""The registry of every MoE-RBench task family, and the writer of their task and group files.

Each family is a folder, `moe_rbench_tasks/<family>/`, whose `__init__.py` declares its `FAMILIES` (tasks, the subset
of the release data each reads, roles, groups, label words, what the report shows) and `SOURCES` (where its data
comes from; moe_rbench_tasks/family.py, docs/guides/add-a-task-family.md). `PACKAGES` collects them, in the order of
the report's tables. Read by the loaders (which subsets exist), by `moe-rbench report` (its tables), by
`moe-rbench data` (every source), by router tracing (whether a family's documents correspond across its tasks) and
by the tests. The task and group YAML files of each family folder, and the umbrella groups in `groups/`, are written
from it with `python -m moe_rbench_tasks.families` (a test fails when they differ); what a family's tasks share
(prompt, output type, metric) is its hand-written `_template*_yaml`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from moe_rbench_models.errors import MoERBenchError, OptionError
from moe_rbench_tasks import TASKS_DIR, adversarial_nli, boss, hallucination, safety, style_ood
from moe_rbench_tasks.adversarial_nli import ADVERSARIAL_NLI
from moe_rbench_tasks.boss import BOSS_NLI, BOSS_SA, BOSS_TD
from moe_rbench_tasks.data import Source
from moe_rbench_tasks.family import BENCHMARK, EXTRA, ID, OOD, ROBUSTNESS, Family, Member, Shown
from moe_rbench_tasks.hallucination import HALLUCINATION
from moe_rbench_tasks.safety import RISK_AREAS, SAFETY, XSTEST_SAFE_TYPES, XSTEST_TASK, XSTEST_UNSAFE_TYPES
from moe_rbench_tasks.style_ood import STYLE_OOD, STYLES

__all__ = [  # the registry, and (as before the families became folders) each family's declaration
    "FAMILIES",
    "PACKAGES",
    "SOURCES",
    "UMBRELLAS",
    "aligned",
    "family_of",
    "family_with_subset",
    "yaml_files",
    "write_yaml_files",
    "Family",
    "Member",
    "Shown",
    "ID",
    "OOD",
    "EXTRA",
    "ADVERSARIAL_NLI",
    "STYLE_OOD",
    "STYLES",
    "BOSS_SA",
    "BOSS_NLI",
    "BOSS_TD",
    "HALLUCINATION",
    "SAFETY",
    "RISK_AREAS",
    "XSTEST_SAFE_TYPES",
    "XSTEST_UNSAFE_TYPES",
    "XSTEST_TASK",
]

PACKAGES = (adversarial_nli, style_ood, boss, hallucination, safety)  # every family folder, in the report's order
GENERATED = (
    "# Written from the family declarations (moe_rbench_tasks/<family>/__init__.py) by\n"
    "# `python -m moe_rbench_tasks.families`: edit them there and run it again.\n"
)


class RegistryError(MoERBenchError):
    """Two family folders declare the same name; the message names both and what to rename."""


def _unique(kind: str, declared: list[tuple[str, str]]) -> None:
    """Every name once over the family folders: a second declaration would silently replace the first."""
    first: dict[str, str] = {}
    for name, package in declared:
        if name in first:
            raise RegistryError(
                f"The {kind} {name!r} is declared by moe_rbench_tasks.{first[name]} and moe_rbench_tasks.{package}; "
                f"rename one of them (a {kind} name is global)."
            )
        first[name] = package


def _collect() -> tuple[tuple[Family, ...], dict[str, Source]]:
    families = tuple(family for package in PACKAGES for family in package.FAMILIES)
    sources = [(source, package.__name__.rpartition(".")[2]) for package in PACKAGES for source in package.SOURCES]
    _unique("task", [(task, family.folder) for family in families for task in family.tasks])
    _unique(
        "group", [(group, family.folder) for family in families for group in (family.group, family.ood_group) if group]
    )
    _unique("data source", [(source.name, package) for source, package in sources])
    return families, {source.name: source for source, _ in sources}


FAMILIES, SOURCES = _collect()
UMBRELLAS = {  # group -> (alias, members)
    ROBUSTNESS: ("Robustness (MoE-RBench)", [f.group for f in FAMILIES if f.umbrella == ROBUSTNESS]),
    BENCHMARK: ("MoE-RBench", [ROBUSTNESS, *(f.group for f in FAMILIES if f.umbrella == BENCHMARK)]),
}


def family_of(task: str) -> Family | None:
    return next((family for family in FAMILIES if task in family.tasks or task == family.ood_group), None)


def family_with_subset(folder: str, subset: str, kind: str) -> Family:
    """The family under `folder` one of whose tasks reads `subset`; an error naming the `kind` of set otherwise."""
    families = [family for family in FAMILIES if family.folder == folder]
    for family in families:
        if subset in family.subsets:
            return family
    known = ", ".join(s for family in families for s in family.subsets)
    raise OptionError(f"Unknown {kind} set {subset!r}; known: {known}")


def aligned(task_a: str, task_b: str) -> bool:
    """Whether document ids of the two tasks name the same documents (router tracing pairs them)."""
    family = family_of(task_a)
    return family is not None and family.aligned_ids and family is family_of(task_b)


# -- the YAML files ----------------------------------------------------------------------------------------------


def _dump(config: dict[str, Any]) -> str:
    return GENERATED + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)


def _group(name: str, alias: str, tasks: list[str], version: float, aggregate: tuple[str, ...] = ()) -> str:
    config: dict[str, Any] = {"group": name, "group_alias": alias, "task": tasks}
    if aggregate:
        config["aggregate_metric_list"] = [
            {"metric": m, "aggregation": "mean", "weight_by_size": False} for m in aggregate
        ]
    return _dump({**config, "metadata": {"version": version}})


def yaml_files() -> dict[str, str]:
    """Every generated task and group file: path under TASKS_DIR (the moe_rbench_tasks package) -> text."""
    files = {}
    for family in FAMILIES:
        for member in family.members:
            config: dict[str, Any] = {"include": member.template, "task": member.task}
            if member.subset is not None:
                config["dataset_kwargs"] = {"subset": member.subset}
            files[f"{family.folder}/{member.task}.yaml"] = _dump({**config, **member.settings})
        grouped = [m.task for m in family.members if m.in_group and (m.role != OOD or family.ood_group is None)]
        if family.ood_group is not None:
            ood = [m.task for m in family.members if m.role == OOD]
            files[f"{family.folder}/{family.ood_group}.yaml"] = _group(
                family.ood_group, family.ood_title, ood, 1.0, ("acc",)
            )
            grouped.insert(1, family.ood_group)
        files[f"{family.folder}/{family.group}.yaml"] = _group(
            family.group, family.title, grouped, family.version, family.aggregate
        )
    for name, (alias, tasks) in UMBRELLAS.items():
        files[f"groups/{name}.yaml"] = _group(name, alias, tasks, 1.0)
    return files


def write_yaml_files(root: str | Path = TASKS_DIR) -> list[Path]:
    written = []
    for relative, text in yaml_files().items():
        path = Path(root) / relative
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_yaml_files():
        print(path)
    sys.exit(0)
