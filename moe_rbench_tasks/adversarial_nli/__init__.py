"""The adversarial NLI family: SNLI validation (standard accuracy), ANLI test rounds R1-R3 (robust accuracy) and
SNLI-hard (the hard subset of SNLI test, Gururangan et al. 2018).

This file declares the family (its tasks and sets, `FAMILIES`) and the data it reads (`SOURCES`, the fine-tuning
sets of `moe-rbench finetune --dataset snli|anli|snli_hard` included); `loader.py` reads the documents,
`_template*_yaml` hold the prompts, README.md describes the tasks.
"""

from moe_rbench_tasks.data import Source
from moe_rbench_tasks.family import EXTRA, ID, ROBUSTNESS, Family, Member, names_of_loader

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
    umbrella=ROBUSTNESS,
)
SNLI = Source(
    name="snli",
    tasks="moe_rbench_snli (validation; few-shot: test), moe_rbench_snli_test (test; few-shot: validation), "
    "few-shot of moe_rbench_snli_hard (validation)",
    local_path="snli/hf",
    files=("validation.tsv", "test.tsv"),
    hub="stanfordnlp/snli, splits validation and test (label -1 rows dropped)",
    obtain="export the hub dataset stanfordnlp/snli to TSV (columns premise, hypothesis, label; label -1 rows "
    "removed), e.g. https://github.com/MJ-Jang/BECEL/tree/main/data/snli",
    license="CC BY-SA 4.0",
)
SNLI_HARD = Source(
    name="snli_hard",
    tasks="moe_rbench_snli_hard",
    local_path="snli/snli_1.0_test_hard.jsonl",
    hub=None,
    obtain="https://nlp.stanford.edu/projects/snli/snli_1.0_test_hard.jsonl (Gururangan et al. 2018, "
    "'Annotation Artifacts in Natural Language Inference Data')",
    license="CC BY-SA 4.0",
)
ANLI = Source(
    name="anli",
    tasks="moe_rbench_anli_r1, moe_rbench_anli_r2, moe_rbench_anli_r3 (test; few-shot: dev of the round)",
    local_path="anli",
    files=tuple(f"R{r}/{split}.jsonl" for r in (1, 2, 3) for split in ("test", "dev")),
    hub="facebook/anli, splits test_r1/2/3 and dev_r1/2/3",
    obtain="https://dl.fbaipublicfiles.com/anli/anli_v1.0.zip (folders R1, R2, R3)",
    license="CC BY-NC 4.0",
)
SNLI_TRAIN = Source(
    name="snli_train",
    tasks="moe-rbench finetune --dataset snli, --dataset anli (the SNLI slice of each round)",
    local_path="snli/hf/train.tsv",
    hub="stanfordnlp/snli, split train",
    obtain="export the hub dataset stanfordnlp/snli, split train, to TSV (columns premise, hypothesis, label) "
    "keeping its label -1 rows: the ANLI protocol shuffles the whole split before it drops them",
    license="CC BY-SA 4.0",
)
ANLI_TRAIN = Source(
    name="anli_train",
    tasks="moe-rbench finetune --dataset anli (ANLI train of each round)",
    local_path="anli",
    files=tuple(f"R{r}/train.jsonl" for r in (1, 2, 3)),
    hub="facebook/anli, splits train_r1/2/3",
    obtain="https://dl.fbaipublicfiles.com/anli/anli_v1.0.zip (folders R1, R2, R3)",
    license="CC BY-NC 4.0",
)
ESNLI_TRAIN = Source(
    name="esnli_train",
    tasks="moe-rbench finetune --dataset snli_hard (e-SNLI train, the SNLI-hard protocol's training set)",
    local_path="esnli",
    files=("esnli_train_1.csv", "esnli_train_2.csv"),
    hub="esnli/esnli, split train",
    obtain="https://github.com/OanaMariaCamburu/e-SNLI (dataset/esnli_train_1.csv and esnli_train_2.csv; "
    "Camburu et al., NeurIPS 2018)",
    license="SNLI: CC BY-SA 4.0; e-SNLI: MIT (repository LICENSE)",
)
FAMILIES = (ADVERSARIAL_NLI,)
SOURCES = (SNLI, SNLI_HARD, ANLI, SNLI_TRAIN, ANLI_TRAIN, ESNLI_TRAIN)

__getattr__ = names_of_loader(__name__)  # moe_rbench_tasks.adversarial_nli.load_docs, as before it was a folder
