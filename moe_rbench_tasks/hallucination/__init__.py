"""The hallucination family: TruthfulQA multiple choice with the DoLa reference protocol, and NQ-open.

This file declares the family (its tasks, `FAMILIES`) and the data it reads (`SOURCES`); `loader.py` reads the
documents and scores TruthfulQA, `_template_*_yaml` hold the prompts, README.md describes the tasks.
"""

from moe_rbench_tasks.data import Source
from moe_rbench_tasks.family import BENCHMARK, EXTRA, Family, Member, Shown, names_of_loader

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
    umbrella=BENCHMARK,
)
TRUTHFULQA = Source(
    name="truthfulqa",
    tasks="moe_rbench_truthfulqa_mc",
    local_path="truthfulqa/TruthfulQA.csv",
    hub="truthfulqa/truthful_qa, config generation, split validation",
    obtain="https://github.com/sylinrl/TruthfulQA/blob/main/TruthfulQA.csv (the 817-question revision)",
    license="Apache-2.0",
)
NQ_OPEN = Source(
    name="nq_open",
    tasks="moe_rbench_nq_open (NQ-open.dev.jsonl; few-shot: the EfficientQA dev questions, disjoint from it)",
    local_path="nq_open",
    files=("NQ-open.dev.jsonl", "NQ-open.efficientqa.dev.1.1.jsonl"),
    hub="google-research-datasets/nq_open, split validation (few-shot: split train)",
    obtain="https://github.com/google-research-datasets/natural-questions/tree/master/nq_open "
    "(NQ-open.dev.jsonl and NQ-open.efficientqa.dev.1.1.jsonl)",
    license="CC BY-SA 3.0",
)
FAMILIES = (HALLUCINATION,)
SOURCES = (TRUTHFULQA, NQ_OPEN)

__getattr__ = names_of_loader(__name__)  # moe_rbench_tasks.hallucination.load_truthfulqa, ... as before
