"""The safety family: harmful instructions from Safety-Tuned LLaMAs and Do-Not-Answer, and XSTest's safe prompts with
their unsafe contrasts, answered by the model and judged.

This file declares the family (its tasks and sets, `FAMILIES`) and the data it reads (`SOURCES`, the instruction
tuning sets of `moe-rbench finetune --protocol instruct` included: the protocol of the safety study); `loader.py`
reads the documents and scores the responses, `_template*_yaml` hold the prompts, README.md describes the tasks.
"""

from moe_rbench_tasks.data import Source
from moe_rbench_tasks.family import BENCHMARK, EXTRA, Family, Member, Shown, names_of_loader

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
    umbrella=BENCHMARK,
)
SAFETY_TUNED_LLAMAS_EVALUATION = Source(
    name="safety_tuned_llamas",
    tasks="moe_rbench_safety_malicious, moe_rbench_safety_cona, moe_rbench_safety_controversial",
    local_path="safety_tuned_llamas/evaluation",
    files=("I-MaliciousInstructions.json", "I-CoNa.json", "I-Controversial.json"),
    hub=None,
    obtain="https://github.com/vinid/safety-tuned-llamas/tree/main/data/evaluation (Bianchi et al., ICLR 2024)",
    license="CC BY-NC 4.0",
)
DO_NOT_ANSWER = Source(
    name="do_not_answer",
    tasks="moe_rbench_safety_dna",
    local_path="do_not_answer/do_not_answer_en.csv",
    hub="LibrAI/do-not-answer, split train",
    obtain="https://github.com/Libr-AI/do-not-answer (datasets/do_not_answer_en.csv; Wang et al. 2023)",
    license="CC BY-NC-SA 4.0",
)
XSTEST = Source(
    name="xstest",
    tasks="moe_rbench_xstest",
    local_path="xstest/xstest_prompts.csv",
    hub="Paul/XSTest, split train (the authors' xstest_prompts.csv)",
    obtain="https://github.com/paul-rottger/exaggerated-safety (xstest_prompts.csv; Röttger et al. 2024)",
    license="CC BY 4.0",
)
ALPACA_DATA = Source(
    name="alpaca",
    tasks="moe-rbench finetune --protocol instruct",
    local_path="alpaca/alpaca_data.json",
    hub="tatsu-lab/alpaca, split train",
    obtain="https://github.com/tatsu-lab/stanford_alpaca (alpaca_data.json)",
    license="CC BY-NC 4.0",
)
ALPACA_SAFETY_SAMPLES = Source(
    name="alpaca_safety_samples",
    tasks="moe-rbench finetune --protocol instruct (the Alpaca samples MoE-RBench removes as safety-related)",
    local_path="moe_rbench/alpaca_data_safety_only.json",
    hub=None,
    obtain="https://github.com/UNITES-Lab/MoE-RBench (safety-evaluation/ft_datasets/alpaca_dataset/"
    "alpaca_data_safety_only.json)",
    license="MIT",
)
SAFETY_TRAINING = Source(
    name="safety_training",
    tasks="moe-rbench finetune --protocol instruct --safety_samples N",
    local_path="safety_tuned_llamas/training/safety_only_data_Instructions.json",
    hub=None,
    obtain="https://github.com/vinid/safety-tuned-llamas (data/training/safety_only_data_Instructions.json)",
    license="CC BY-NC 4.0",
)
FAMILIES = (SAFETY,)
SOURCES = (SAFETY_TUNED_LLAMAS_EVALUATION, DO_NOT_ANSWER, XSTEST, ALPACA_DATA, ALPACA_SAFETY_SAMPLES, SAFETY_TRAINING)

__getattr__ = names_of_loader(__name__)  # moe_rbench_tasks.safety.load_docs, .refusal_rate, ... as before
