"""Adversarial NLI's documents: SNLI validation (standard accuracy), ANLI test rounds R1-R3 (robust accuracy) and
SNLI-hard (the hard subset of SNLI test, Gururangan et al. 2018).

Every task's `custom_dataset` is `load_docs(subset=...)` (subsets: the family's declaration, __init__.py), returning
split `test` (the evaluated documents) and split `train` (few-shot demonstrations from a split that never overlaps
`test`: SNLI test for SNLI validation, SNLI validation for SNLI-hard, the round's dev set for ANLI).
Documents: `{"id", "premise", "hypothesis", "label", "choices"}` with label 0 entailment, 1 neutral, 2 contradiction.
`id` aligns documents across sets for router tracing: for SNLI and SNLI-hard it is the pair's text
(neither SNLI's hub copy nor its TSV export carries the pairID, and premise plus hypothesis identify a
pair: all 3,261 hard pairs match a test row), for ANLI its `uid`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import datasets

from moe_rbench_tasks.adversarial_nli import ADVERSARIAL_NLI, ANLI, SNLI, SNLI_HARD
from moe_rbench_tasks.data import (
    MalformedDataError,
    label_index,
    load_from_hub,
    local_file,
    read_jsonl,
    read_table,
    require_data_dir,
    resolve_data_dir,
)
from moe_rbench_tasks.families import family_with_subset

LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2, "e": 0, "n": 1, "c": 2}  # e/n/c: ANLI release files
SPLITS = {  # subset -> (test split, few-shot split)
    "snli": ("validation", "test"),
    "snli_test": ("test", "validation"),  # beyond the paper: the full test set SNLI-hard is a subset of
    "snli_hard": ("test_hard", "validation"),
    **{f"anli_r{r}": (f"test_r{r}", f"dev_r{r}") for r in (1, 2, 3)},
}


def load_docs(subset: str, data_dir: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """`custom_dataset` of the adversarial NLI tasks; `data_dir` (or MOE_RBENCH_DATA_DIR) selects local files."""
    family_with_subset(ADVERSARIAL_NLI.folder, subset, "adversarial NLI")
    root = resolve_data_dir(data_dir)
    test_split, fewshot_split = SPLITS[subset]

    return datasets.DatasetDict(
        test=datasets.Dataset.from_list(read_split(test_split, root)),
        train=datasets.Dataset.from_list(read_split(fewshot_split, root)),
    )


def read_split(split: str, root) -> list[dict]:
    """Documents of a split (SNLI `train`, `validation`, `test`; `test_hard`; ANLI `test_r1`, `dev_r1`, ...) from the
    data directory `root`, or from the hub when it is None."""
    return _from_release_files(split, root) if root else _from_hub(split)


def _from_release_files(split: str, root) -> list[dict]:
    if split == "test_hard":
        path = local_file(SNLI_HARD, require_data_dir(SNLI_HARD, root))
        rows = read_jsonl(path)
        return [
            _doc(
                row.get("sentence1"),
                row.get("sentence2"),
                row.get("gold_label"),
                f"{path}[{i}]",
                pair_id=row.get("pairID"),
            )
            for i, row in enumerate(rows)
        ]
    if split.startswith(("test_r", "dev_r")):
        kind, round_number = split.split("_r")
        path = local_file(ANLI, root, f"R{round_number}/{kind}.jsonl")
        return [
            _doc(row.get("context"), row.get("hypothesis"), row.get("label"), f"{path}[{i}]", uid=row.get("uid"))
            for i, row in enumerate(read_jsonl(path))
        ]
    path = local_file(SNLI, root, f"{split}.tsv")
    rows = read_table(path, ("premise", "hypothesis", "label"), delimiter="\t")
    return [_doc(row["premise"], row["hypothesis"], row["label"], f"{path}, row {i + 1}") for i, row in enumerate(rows)]


def _from_hub(split: str) -> list[dict]:
    if split == "test_hard":
        require_data_dir(SNLI_HARD, None)
    if split.startswith(("test_r", "dev_r")):
        rows = load_from_hub(ANLI, "facebook/anli", split=split)
        return [
            _doc(row["premise"], row["hypothesis"], row["label"], f"facebook/anli {split}[{i}]", uid=row["uid"])
            for i, row in enumerate(rows)
        ]
    rows = load_from_hub(SNLI, "stanfordnlp/snli", split=split).filter(lambda row: row["label"] != -1)
    return [
        _doc(row["premise"], row["hypothesis"], row["label"], f"stanfordnlp/snli {split}[{i}]")
        for i, row in enumerate(rows)
    ]


def _doc(
    premise: Any, hypothesis: Any, label: Any, where: str, pair_id: str | None = None, uid: str | None = None
) -> dict:
    for name, text in (("premise", premise), ("hypothesis", hypothesis)):
        if not isinstance(text, str) or not text.strip():
            raise MalformedDataError(f"{where}: {name} must be a non-empty string, got {text!r}")
    return nli_document(premise, hypothesis, label, where, uid, pair_id)


def nli_document(
    premise: str, hypothesis: str, label: Any, where: str, uid: str | None = None, pair_id: str | None = None
) -> dict:
    """The document of an NLI pair whose texts were checked (`where` names it in a label error): its id is `uid` or
    the pair's key, its label the index of the release's label."""
    return {
        "id": uid or pair_key(premise, hypothesis),
        "premise": premise,
        "hypothesis": hypothesis,
        "label": label_index(label, LABELS, where),
        "pair_id": pair_id,
        "choices": list(ADVERSARIAL_NLI.choices),
    }


def pair_key(premise: str, hypothesis: str) -> str:
    """A short stable key of an SNLI pair, the same in every copy of SNLI."""
    return hashlib.sha1(f"{premise.strip()}\t{hypothesis.strip()}".encode()).hexdigest()[:16]
