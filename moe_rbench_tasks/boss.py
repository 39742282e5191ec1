"""BOSS (Yuan et al. 2023): in-distribution and OOD test sets for sentiment (sa), NLI (nli) and toxicity
(td), read from the BOSS release layout `<data dir>/boss/<set>/{train,test}.tsv` (BOSS has no hub copy).

`load_docs(suite=..., dataset=...)` returns split `test` (the set's `test.tsv`) and split `train`,
the few-shot demonstrations: the `train.tsv` of the suite's in-distribution set (BOSS evaluates
in-context learning with ID demonstrations), never a test file. Without that file the split is empty
(zero-shot runs need only `test.tsv`) and a warning names the file few-shot runs would need.
Documents: `{"id", "text", "label"}` (sa, td) or `{"id", "premise", "hypothesis", "label"}` (nli); `id` is
`<set>/<split>/<row>`: BOSS's sets hold different documents, so no two tasks share an id (router tracing pairs none).
"""

from __future__ import annotations

import logging
from typing import Any

import datasets

from moe_rbench_tasks.data import (
    SOURCES,
    MalformedDataError,
    local_file,
    read_table,
    require_data_dir,
    resolve_data_dir,
)

logger = logging.getLogger(__name__)

SUITES = {  # suite -> (ID set, OOD sets, label words)
    "sa": ("amazon", ("dynasent", "semeval", "sst5"), ("negative", "positive", "neutral")),
    "nli": ("mnli", ("anli", "contract_nli", "wanli"), ("entailment", "neutral", "contradiction")),
    "td": ("civil_comments", ("adv_civil", "implicit_hate", "toxigen"), ("benign", "toxic")),
}
SOURCE = SOURCES["boss"]


def load_docs(suite: str, dataset: str, data_dir: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """`custom_dataset` of the BOSS tasks."""
    if suite not in SUITES or dataset not in (SUITES[suite][0], *SUITES[suite][1]):
        raise ValueError(f"Unknown BOSS set {suite}/{dataset}; sets: "
                         + "; ".join(f"{s}: {', '.join((i, *o))}" for s, (i, o, _) in SUITES.items()))  # fmt: skip
    root = require_data_dir(SOURCE, resolve_data_dir(data_dir))
    test = _docs(suite, local_file(SOURCE, root, f"{dataset}/test.tsv"))
    id_set = SUITES[suite][0]
    demonstrations = root / SOURCE.local_path / id_set / "train.tsv"
    if demonstrations.is_file():
        train = _docs(suite, demonstrations)
    else:
        logger.warning("BOSS %s: no few-shot demonstrations (%s does not exist); --num_fewshot needs that file of the "
                       "BOSS bundle", dataset, demonstrations)  # fmt: skip
        train = []
    empty = datasets.Dataset.from_dict({key: [] for key in test[0]})
    return datasets.DatasetDict(test=datasets.Dataset.from_list(test),
                                train=datasets.Dataset.from_list(train) if train else empty)  # fmt: skip


def _docs(suite: str, path) -> list[dict]:
    columns = ("Premise", "Hypothesis", "Label") if suite == "nli" else ("Text", "Label")
    rows = read_table(path, columns, delimiter="\t")
    words = SUITES[suite][2]
    docs = []
    for number, row in enumerate(rows):
        where = f"{path}, row {number + 1}"
        texts = {name.lower(): row[name] for name in columns[:-1]}
        for name, text in texts.items():
            if not text.strip():
                raise MalformedDataError(f"{where}: {name} is empty")
        label = _label(row["Label"], words, where)
        docs.append({"id": f"{path.parent.name}/{path.stem}/{number}", **texts, "label": label})
    return docs


def _label(value: str, words: tuple[str, ...], where: str) -> int:
    text = value.strip().lower()
    if text.isdigit() and int(text) < len(words):
        return int(text)
    if text in words:
        return words.index(text)
    choices = ", ".join(f"{i} or {word}" for i, word in enumerate(words))
    raise MalformedDataError(f"{where}: label must be one of {choices}; got {value!r}")
