"""The Style-OOD family: SST-2 validation (in distribution) and its ten DecodingTrust style transformations (OOD).

This file declares the family (its tasks and sets, `FAMILIES`) and the data it reads (`SOURCES`); `loader.py` reads
the documents, `_template_yaml` holds the prompt, README.md describes the tasks.
"""

from moe_rbench_tasks.data import Source
from moe_rbench_tasks.family import ID, ROBUSTNESS, Family, Member, names_of_loader

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
    umbrella=ROBUSTNESS,
)
DECODINGTRUST_STYLE = Source(
    name="decodingtrust_style",
    tasks="moe_rbench_sst2, moe_rbench_style_*",
    local_path="decodingtrust/style.json",
    hub="AI-Secure/DecodingTrust, config ood, split style (ID documents: nyu-mll/glue, config sst2, split validation)",
    obtain="https://github.com/AI-secure/DecodingTrust/blob/main/data/ood/style.json",
    license="CC BY-SA 4.0",
)
SST2_TRAIN = Source(
    name="sst2_train",
    tasks="moe-rbench finetune --dataset sst2 (Style-OOD)",
    local_path="sst2/train.tsv",
    hub="nyu-mll/glue, config sst2, split train",
    obtain="the GLUE SST-2 train.tsv (columns sentence, label; https://gluebenchmark.com/tasks)",
    license="SST / GLUE: research use",
)
FAMILIES = (STYLE_OOD,)
SOURCES = (DECODINGTRUST_STYLE, SST2_TRAIN)

__getattr__ = names_of_loader(__name__)  # moe_rbench_tasks.style_ood.load_docs, as before the family was a folder
