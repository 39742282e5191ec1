"""What a task family declares: its tasks (`Member`), the subset of the release data each reads, its role, the groups
that aggregate them, the label words its prompts offer and what the report shows of it (`Family`).

Each family is a folder, `moe_rbench_tasks/<family>/` (docs/guides/add-a-task-family.md): its `__init__.py` declares
`FAMILIES` (the `Family` objects, usually one) and `SOURCES` (the `moe_rbench_tasks.data.Source` of each data set it
reads) and imports nothing heavy, `loader.py` holds what its task files call (`custom_dataset`, `process_results`),
its hand-written `_template*_yaml` what its tasks share (prompt, output type, metric), and the task and group files
beside them are written from the declaration by `python -m moe_rbench_tasks.families`, which collects every family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ID, OOD, EXTRA = "id", "ood", "extra"  # in distribution (standard), out of distribution (robust), neither
ROBUSTNESS, BENCHMARK = "moe_rbench_robustness", "moe_rbench"  # the umbrella groups a family's group can join


@dataclass(frozen=True)
class Shown:
    """A number the report shows: its column title, and the task's (or group's) metric and filter."""

    title: str
    metric: str = "acc"
    filter: str = "none"


@dataclass(frozen=True)
class Member:
    task: str
    subset: str | None  # what the family's loader reads (the task's dataset_kwargs.subset); None: the loader has one
    title: str  # its column in the report
    role: str = OOD
    in_group: bool = True  # part of the family's group (and report table)
    template: str = "_template_yaml"
    shown: tuple[Shown, ...] = ()  # the report's columns for it (default: its accuracy, under `title`)
    judged_by_part: bool = False  # judge summaries per part only (XSTest: safe and unsafe prompts never mix)
    settings: dict = field(default_factory=dict)  # further settings of its task file

    @property
    def columns(self) -> tuple[Shown, ...]:
        return self.shown or (Shown(self.title),)


@dataclass(frozen=True)
class Family:
    key: str  # the report table's name
    folder: str  # its package under moe_rbench_tasks/, which holds its task files
    group: str
    title: str  # the group's alias
    report_title: str
    members: tuple[Member, ...]
    choices: tuple[str, ...] = ()  # the label words its prompts offer, class i first (multiple choice)
    ood_group: str | None = None  # the group whose `acc` is the OOD (robust) score: the mean over the OOD tasks
    ood_title: str = ""
    ood_column: str = "OOD mean"
    aggregate: tuple[str, ...] = ()  # metrics the family's group averages over its tasks
    aligned_ids: bool = False  # a document `id` means the same document in every task of the family
    version: float = 1.0  # of its groups
    umbrella: str | None = None  # the umbrella group its group joins (ROBUSTNESS or BENCHMARK); None: neither

    @property
    def tasks(self) -> list[str]:
        return [member.task for member in self.members]

    @property
    def subsets(self) -> list[str]:
        return [member.subset for member in self.members if member.subset is not None]

    def member(self, subset: str) -> Member:
        return next(member for member in self.members if member.subset == subset)


def names_of_loader(package: str) -> Callable[[str], Any]:
    """A module `__getattr__` for a family package that moved from a module (`moe_rbench_tasks/style_ood.py`) into a
    folder: the names of its `loader.py` stay importable from the package, so that `!function
    moe_rbench_tasks.style_ood.load_docs` in a user's task file keeps working. The loader is imported on first use
    only: the package itself (the declaration) stays light."""

    def module_getattr(name: str) -> Any:
        if name.startswith("__"):  # Python's and tools' probes (__wrapped__, __path__ ...) never mean the loader
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loader = importlib.import_module(f"{package}.loader")
        if name == "loader":
            return loader
        return getattr(loader, name)

    return module_getattr
