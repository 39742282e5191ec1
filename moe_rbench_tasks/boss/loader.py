"""BOSS's documents (Yuan et al. 2023): in-distribution and OOD test sets for sentiment (sa), NLI (nli) and toxicity
(td), read from the BOSS release layout `<data dir>/boss/<set>/{train,test}.tsv` (BOSS has no hub copy).

`load_docs(subset=...)` (a BOSS set; the suites and their sets are declared in __init__.py) returns split `test`
(the set's `test.tsv`) and split `train`, the few-shot demonstrations: the `train.tsv` of the suite's
in-distribution set (BOSS evaluates in-context learning with ID demonstrations), never a test file. Without that
file the split is empty (zero-shot runs need only `test.tsv`) and a warning names the file few-shot runs need.
Documents: `{"id", "text", "label", "choices"}` (sa, td) or `{"id", "premise", "hypothesis", "label", "choices"}`
(nli); `id` is `<set>/<split>/<row>`: BOSS's sets hold different documents, so no two tasks share an id (router
tracing pairs none).
"""

from __future__ import annotations

import logging
from typing import Any

import datasets

from moe_rbench_tasks.boss import BOSS
from moe_rbench_tasks.data import (
    MalformedDataError,
    label_index,
    local_file,
    read_table,
    require_data_dir,
    resolve_data_dir,
)
from moe_rbench_tasks.families import family_with_subset

logger = logging.getLogger(__name__)

RELEASE_LABELS = {  # label words of the release files, by the suite's ID set
    "amazon": ("negative", "positive", "neutral"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "civil_comments": ("benign", "toxic"),
}
SOURCE = BOSS


def load_docs(subset: str, data_dir: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """`custom_dataset` of the BOSS tasks."""
    family = family_with_subset("boss", subset, "BOSS")
    id_set = family.members[0].subset
    root = require_data_dir(SOURCE, resolve_data_dir(data_dir))
    test = docs(family, id_set, local_file(SOURCE, root, f"{subset}/test.tsv"))
    demonstrations = root / SOURCE.local_path / id_set / "train.tsv"
    if demonstrations.is_file():
        train = docs(family, id_set, demonstrations)
    else:
        logger.warning(
            "BOSS %s: no few-shot demonstrations (%s does not exist); --num_fewshot needs that file of the BOSS bundle",
            subset,
            demonstrations,
        )
        train = []
    empty = datasets.Dataset.from_dict({key: [] for key in test[0]})
    return datasets.DatasetDict(
        test=datasets.Dataset.from_list(test), train=datasets.Dataset.from_list(train) if train else empty
    )


def docs(family, id_set: str, path) -> list[dict]:
    columns = ("Premise", "Hypothesis", "Label") if id_set == "mnli" else ("Text", "Label")
    rows = read_table(path, columns, delimiter="\t")
    docs = []
    for number, row in enumerate(rows):
        where = f"{path}, row {number + 1}"
        texts = {name.lower(): row[name] for name in columns[:-1]}
        for name, text in texts.items():
            if not text.strip():
                raise MalformedDataError(f"{where}: {name} is empty")
        label = label_index(row["Label"], RELEASE_LABELS[id_set], where)
        docs.append(
            {"id": f"{path.parent.name}/{path.stem}/{number}", **texts, "label": label, "choices": list(family.choices)}
        )
    return docs
