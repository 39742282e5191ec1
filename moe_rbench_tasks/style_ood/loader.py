"""Style-OOD's documents: SST-2 validation (in distribution) and its ten DecodingTrust style transformations (OOD).

Every task's `custom_dataset` is `load_docs(subset=...)` (a DecodingTrust set: `base` is SST-2 validation; the
sets are declared in __init__.py), returning split `test` (the 872 documents of that set) and split `train`
(DecodingTrust's few-shot demonstrations, disjoint from `test`). Documents: `{"id", "sentence", "label", "style",
"choices"}`; `id` is DecodingTrust's, shared by an SST-2 document and all its styled versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import datasets

from moe_rbench_tasks.data import (
    MalformedDataError,
    label_index,
    load_from_hub,
    local_file,
    read_json,
    resolve_data_dir,
)
from moe_rbench_tasks.families import family_with_subset
from moe_rbench_tasks.style_ood import DECODINGTRUST_STYLE, STYLE_OOD

SOURCE = DECODINGTRUST_STYLE
SST2_HUB = ("nyu-mll/glue", "sst2", "validation")
STYLE_HUB = ("AI-Secure/DecodingTrust", "ood", "style")

# DecodingTrust ships demonstrations (train_demo, 3 sets of 8) for base and the four p0.6 styles only;
# every other style borrows those of its nearest relative.
DEMO_SET = {
    "base": "base",
    "augment": "base",
    "shake_w": "shake_p0.6",
    **{f"{style}_p0": f"{style}_p0.6" for style in ("shake", "bible", "romantic", "tweet")},
    **{f"{style}_p0.6": f"{style}_p0.6" for style in ("shake", "bible", "romantic", "tweet")},
}


def load_docs(subset: str, data_dir: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """`custom_dataset` of the Style-OOD tasks. `data_dir` (or MOE_RBENCH_DATA_DIR) selects the local
    release file; other metadata (the model arguments lm-eval passes along) is not used."""
    style = subset
    family_with_subset(STYLE_OOD.folder, style, "Style-OOD")
    root = resolve_data_dir(data_dir)
    test, train = _from_release_file(style, root) if root else _from_hub(style)
    return datasets.DatasetDict(test=datasets.Dataset.from_list(test), train=datasets.Dataset.from_list(train))


def _from_release_file(style: str, root) -> tuple[list[dict], list[dict]]:
    path = local_file(SOURCE, root)
    release = read_json(path)
    if not isinstance(release, dict) or not {"dev", "train_demo"} <= release.keys():
        raise MalformedDataError(
            f"{path}: expected an object with keys 'dev' and 'train_demo' (DecodingTrust style.json)"
        )
    if style not in release["dev"]:
        raise MalformedDataError(f"{path}: dev has no set {style!r} (found: {', '.join(release['dev'])})")
    test = to_docs(release["dev"][style], style, where=f"{path}: dev.{style}")
    demo_keys = sorted(key for key in release["train_demo"] if key.rsplit("_", 1)[0] == DEMO_SET[style])
    train = [
        doc
        for key in demo_keys
        for doc in to_docs(release["train_demo"][key], style, where=f"{path}: train_demo.{key}")
    ]
    return test, train


def _from_hub(style: str) -> tuple[list[dict], list[dict]]:
    styled = load_from_hub(SOURCE, STYLE_HUB[0], STYLE_HUB[1], split=STYLE_HUB[2])
    if style == STYLE_OOD.members[0].subset:
        sst2 = load_from_hub(SOURCE, SST2_HUB[0], SST2_HUB[1], split=SST2_HUB[2])
        test = to_docs(sst2, style, where="/".join(SST2_HUB), fields=("sentence", "label", "idx"))
    else:
        test = to_docs(_hub_rows(styled, "dev", style), style, where="/".join(STYLE_HUB))
    demos = _hub_rows(styled, "train_demo", DEMO_SET[style])
    return test, to_docs(demos, style, where="/".join(STYLE_HUB))


def _hub_rows(rows: Iterable[Mapping], split: str, style: str) -> list[dict]:
    """Rows of the hub copy, which flattens style.json to `{split, category, question_sentence, answer}`;
    demonstration sets keep style.json's `<style>_<k>` names as category."""
    selected = []
    for row in rows:
        category = row["category"] if split == "dev" else row["category"].rsplit("_", 1)[0]
        if row["split"] == split and category == style:
            selected.append({"sentence": row["question_sentence"], "label": row["answer"], "id": row.get("id")})
    return selected


def to_docs(rows: Iterable[Mapping], style: str, where: str, fields=("sentence", "label", "id")) -> list[dict]:
    """Validated documents; a bad row raises MalformedDataError naming `where`, the row and the problem."""
    sentence_key, label_key, id_key = fields
    docs = []
    for index, row in enumerate(rows):
        sentence, label = row.get(sentence_key), row.get(label_key)
        if not isinstance(sentence, str) or not sentence.strip():
            raise MalformedDataError(f"{where}[{index}]: {sentence_key!r} must be a non-empty string, got {sentence!r}")
        label = label_index(label, STYLE_OOD.choices, f"{where}[{index}]")
        doc_id = row.get(id_key)
        docs.append(
            {
                "id": index if doc_id is None else int(doc_id),
                "sentence": sentence,
                "label": label,
                "style": style,
                "choices": list(STYLE_OOD.choices),
            }
        )
    return docs
