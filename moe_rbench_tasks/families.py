"""Every MoE-RBench task family, declared once: its tasks, the subset of the release data each one reads, its role,
the groups that aggregate them, the label words its prompts offer and what the report shows of it.

Read by the loaders (which subsets exist, which label words to offer), by `moe-rbench report` (its tables), by
router tracing (whether a family's documents correspond across its tasks) and by the tests. The task and group YAML
files under task_yamls/ are written from it with `python -m moe_rbench_tasks.families` (a test fails when they
differ); what a family's tasks share (prompt, output type, metric) is its hand-written `_template_yaml`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moe_rbench_models.errors import OptionError
from moe_rbench_tasks import TASKS_DIR

ID, OOD, EXTRA = "id", "ood", "extra"  # in distribution (standard), out of distribution (robust), neither
GENERATED = (
    "# Written from moe_rbench_tasks/families.py: edit it there and run `python -m moe_rbench_tasks.families`.\n"
)


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
    folder: str  # under task_yamls/
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

    @property
    def tasks(self) -> list[str]:
        return [member.task for member in self.members]

    @property
    def subsets(self) -> list[str]:
        return [member.subset for member in self.members if member.subset is not None]

    def member(self, subset: str) -> Member:
        return next(member for member in self.members if member.subset == subset)


STYLES = (  # (task suffix, DecodingTrust set)
    *((name, name) for name in ("augment", "shake_w", "shake_p0")),
    ("shake_p06", "shake_p0.6"),
    *(
        (f"{style}_p0{tail}", f"{style}_p0{dot}")
        for style in ("bible", "romantic", "tweet")
        for tail, dot in (("", ""), ("6", ".6"))
    ),
)
STYLE_OOD = Family(
    key="style_ood",
    folder="style_ood",
    group="moe_rbench_ood",
    title="Style-OOD (MoE-RBench)",
    report_title="Style-OOD (accuracy)",
    members=(
        Member("moe_rbench_sst2", "base", "ID (SST-2)", ID),
        *(Member(f"moe_rbench_style_{suffix}", subset, suffix) for suffix, subset in STYLES),
    ),
    choices=("negative", "positive"),
    ood_group="moe_rbench_ood_styles",
    ood_title="Style-OOD: OOD mean over 10 styles",
    aligned_ids=True,  # DecodingTrust ids: an SST-2 sentence and its styled versions
    version=2.0,
)
ADVERSARIAL_NLI = Family(
    key="adversarial",
    folder="adversarial_nli",
    group="moe_rbench_adv",
    title="Adversarial NLI (MoE-RBench)",
    report_title="Adversarial robustness (accuracy)",
    members=(
        Member("moe_rbench_snli", "snli", "SA (SNLI)", ID),
        *(Member(f"moe_rbench_anli_r{r}", f"anli_r{r}", f"RA R{r}") for r in (1, 2, 3)),
        Member("moe_rbench_snli_hard", "snli_hard", "SNLI-hard", EXTRA, template="_template_hard_yaml"),
        # beyond the paper: the full SNLI test set SNLI-hard is drawn from, so that tracing can pair the two
        Member("moe_rbench_snli_test", "snli_test", "SNLI test", EXTRA, in_group=False),
    ),
    choices=("Yes", "Maybe", "No"),
    ood_group="moe_rbench_anli",
    ood_title="ANLI R1-R3: robust accuracy (mean)",
    ood_column="RA mean",
    aligned_ids=True,  # an SNLI pair has the same id in SNLI test and SNLI-hard
    version=2.0,
)


def _boss(suite: str, title: str, id_set: str, ood: tuple[str, ...], choices: tuple[str, ...]) -> Family:
    return Family(
        key=f"boss_{suite}",
        folder="boss",
        group=f"moe_rbench_boss_{suite}",
        title=f"BOSS {title} (MoE-RBench)",
        report_title=f"BOSS {title} (accuracy)",
        members=tuple(
            Member(
                f"moe_rbench_boss_{suite}_{name}",
                name,
                f"ID {name}" if role == ID else name,
                role,
                template=f"_template_{suite}_yaml",
            )
            for name, role in ((id_set, ID), *((name, OOD) for name in ood))
        ),
        choices=choices,
        ood_group=f"moe_rbench_boss_{suite}_ood",
        ood_title=f"BOSS {title}: OOD mean over {len(ood)} sets",
        version=2.0,
    )


BOSS_SA = _boss("sa", "sentiment", "amazon", ("dynasent", "semeval", "sst5"), ("negative", "positive", "neutral"))
BOSS_NLI = _boss("nli", "NLI", "mnli", ("anli", "contract_nli", "wanli"), ("Yes", "Maybe", "No"))
BOSS_TD = _boss("td", "toxicity", "civil_comments", ("adv_civil", "implicit_hate", "toxigen"), ("benign", "toxic"))
HALLUCINATION = Family(
    key="hallucination",
    folder="hallucination",
    group="moe_rbench_hallucination",
    title="Hallucination (MoE-RBench)",
    report_title="Hallucination",
    members=(
        Member(
            "moe_rbench_truthfulqa_mc",
            None,
            "TruthfulQA",
            EXTRA,
            template="_template_truthfulqa_yaml",
            shown=(Shown("MC1", "mc1"), Shown("MC2", "mc2"), Shown("MC3", "mc3")),
        ),
        Member(
            "moe_rbench_nq_open",
            None,
            "NQ-open",
            EXTRA,
            template="_template_nq_open_yaml",
            shown=(Shown("NQ EM", "exact_match", "remove_whitespace"),),
        ),
    ),
)
RISK_AREAS = {  # Do-Not-Answer risk area -> metric suffix
    "Information Hazards": "information_hazards",
    "Malicious Uses": "malicious_uses",
    "Discrimination, Exclusion, Toxicity, Hateful, Offensive": "discrimination_toxicity",
    "Misinformation Harms": "misinformation_harms",
    "Human-Chatbot Interaction Harms": "human_chatbot_interaction_harms",
}
_RATE = {"aggregation": "mean", "higher_is_better": True}
XSTEST_SAFE_TYPES = (  # XSTest v2 prompt types to be answered (over-refusal), 25 prompts each, in file order
    "homonyms",
    "figurative_language",
    "safe_targets",
    "safe_contexts",
    "definitions",
    "nons_group_real_discr",
    "real_group_nons_discr",
    "historical_events",
    "privacy_public",
    "privacy_fictional",
)
XSTEST_UNSAFE_TYPES = tuple(  # their unsafe contrasts, to be refused
    f"contrast_{name}"
    for name in (
        "homonyms",
        "figurative_language",
        "safe_targets",
        "safe_contexts",
        "definitions",
        "discr",
        "historical_events",
        "privacy",
    )
)
XSTEST_TASK = "moe_rbench_xstest"
_OVER_REFUSAL = {"aggregation": "mean", "higher_is_better": False}
SAFETY = Family(
    key="safety",
    folder="safety",
    group="moe_rbench_safety",
    title="Safety (MoE-RBench)",
    report_title="Safety: refusal rate (in-task judge)",
    members=(
        *(
            Member(f"moe_rbench_safety_{name}", name, name, EXTRA, shown=(Shown(name, "refusal_rate"),))
            for name in ("malicious", "cona", "controversial")
        ),
        Member(
            "moe_rbench_safety_dna",
            "dna",
            "dna",
            EXTRA,
            shown=(Shown("dna", "refusal_rate"),),
            settings={
                "metric_list": [
                    {"metric": "refusal_rate", **_RATE},
                    *({"metric": f"refusal_rate_{area}", **_RATE} for area in RISK_AREAS.values()),
                ]
            },
        ),
        # beyond the paper: over-refusal (XSTest, Röttger et al. 2024) beside refusal
        Member(
            XSTEST_TASK,
            "xstest",
            "XSTest",
            EXTRA,
            template="_template_xstest_yaml",
            shown=(Shown("XSTest unsafe", "refusal_rate"), Shown("XSTest safe: over-refusal", "over_refusal_rate")),
            judged_by_part=True,
            settings={
                "metric_list": [
                    {"metric": "over_refusal_rate", **_OVER_REFUSAL},
                    {"metric": "refusal_rate", **_RATE},
                    *({"metric": f"over_refusal_rate_{kind}", **_OVER_REFUSAL} for kind in XSTEST_SAFE_TYPES),
                    *({"metric": f"refusal_rate_{kind}", **_RATE} for kind in XSTEST_UNSAFE_TYPES),
                ]
            },
        ),
    ),
    aggregate=("refusal_rate",),
    version=2.0,  # 2.0: XSTest joined (its unsafe prompts count in the refusal rate)
)
FAMILIES = (ADVERSARIAL_NLI, STYLE_OOD, BOSS_SA, BOSS_NLI, BOSS_TD, HALLUCINATION, SAFETY)
UMBRELLAS = {  # group -> (alias, members)
    "moe_rbench_robustness": ("Robustness (MoE-RBench)", [f.group for f in FAMILIES[:5]]),
    "moe_rbench": ("MoE-RBench", ["moe_rbench_robustness", HALLUCINATION.group, SAFETY.group]),
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
    """Every generated task and group file: path under task_yamls/ -> text."""
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
