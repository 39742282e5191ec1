"""Safety generation's documents and metrics: harmful instructions from Safety-Tuned LLaMAs
(I-MaliciousInstructions, I-CoNa, I-Controversial) and Do-Not-Answer, and XSTest's safe prompts with their unsafe
contrasts, answered by the model and judged (in-task: the refusal judge; afterwards: `moe-rbench judge`).

`load_docs(subset=...)` (a prompt set, declared in __init__.py) returns split `test`: `{"id", "instruction",
"prompt", "risk_area", "harm_type", "part"}`. `prompt` is the reference's Alpaca prompt, or the bare instruction with
metadata `safety_prompt: plain` (for chat models run with `--apply_chat_template`, which wraps it in the chat turn).
`part` is what judge summaries split a set by: the Do-Not-Answer risk area, XSTest's `safe` or `unsafe`.

XSTest's documents come round-robin over its 18 prompt types (type 1's first prompt, type 2's first, ...), so that
`--limit N` takes safe and unsafe prompts of every type alike; `id` is the XSTest id.
"""

from __future__ import annotations

from typing import Any

import datasets

from moe_rbench_models.errors import OptionError
from moe_rbench_tasks.data import (
    MalformedDataError,
    load_from_hub,
    local_file,
    read_json,
    read_table,
    require_data_dir,
    resolve_data_dir,
)
from moe_rbench_tasks.families import family_with_subset
from moe_rbench_tasks.judges.refusal import is_refusal, xstest_refusal
from moe_rbench_tasks.safety import (
    DO_NOT_ANSWER,
    RISK_AREAS,
    SAFETY,
    SAFETY_TUNED_LLAMAS_EVALUATION,
    XSTEST,
    XSTEST_SAFE_TYPES,
    XSTEST_UNSAFE_TYPES,
)

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
SAFETY_TUNED_LLAMAS = {  # prompt set -> its file in the Safety-Tuned LLaMAs evaluation folder
    "malicious": "I-MaliciousInstructions.json",
    "cona": "I-CoNa.json",
    "controversial": "I-Controversial.json",
}
PROMPT_STYLES = ("alpaca", "plain")


def load_docs(
    subset: str, data_dir: str | None = None, safety_prompt: str = "alpaca", **_metadata: Any
) -> datasets.DatasetDict:
    family_with_subset(SAFETY.folder, subset, "safety prompt")
    if safety_prompt not in PROMPT_STYLES:
        raise OptionError(f"safety_prompt must be one of {', '.join(PROMPT_STYLES)}, got {safety_prompt!r}")
    root = resolve_data_dir(data_dir)
    if subset == "dna":
        rows = _do_not_answer(root)
    elif subset == "xstest":
        rows = _xstest(root)
    else:
        rows = _safety_tuned_llamas(SAFETY_TUNED_LLAMAS[subset], root)
    docs = [
        {
            **row,
            "prompt": ALPACA.format(instruction=row["instruction"])
            if safety_prompt == "alpaca"
            else row["instruction"],
        }
        for row in rows
    ]
    return datasets.DatasetDict(test=datasets.Dataset.from_list(docs))


def _safety_tuned_llamas(name: str, root) -> list[dict]:
    source = SAFETY_TUNED_LLAMAS_EVALUATION
    path = local_file(source, require_data_dir(source, root), name)
    release = read_json(path)
    instructions = release.get("instructions") if isinstance(release, dict) else None
    if not isinstance(instructions, list) or not all(isinstance(i, str) and i.strip() for i in instructions):
        raise MalformedDataError(f"{path}: expected {{'instructions': [non-empty strings], ...}}")
    tags = release.get("tags") or [None] * len(instructions)
    if not isinstance(tags, list) or len(tags) != len(instructions):
        raise MalformedDataError(
            f"{path}: {len(tags) if isinstance(tags, list) else 'no list of'} tags for "
            f"{len(instructions)} instructions; every instruction needs its tag (or drop 'tags')"
        )
    return [
        {"id": str(i), "instruction": text, "risk_area": None, "harm_type": tag, "part": None}
        for i, (text, tag) in enumerate(zip(instructions, tags, strict=True))
    ]


def _do_not_answer(root) -> list[dict]:
    source = DO_NOT_ANSWER
    if root:
        path = local_file(source, root)
        rows, where = read_table(path, ("risk_area", "question")), str(path)
    else:
        rows, where = load_from_hub(source, "LibrAI/do-not-answer", split="train"), "LibrAI/do-not-answer"
    docs = []
    for i, row in enumerate(rows):
        if row.get("risk_area") not in RISK_AREAS or not str(row.get("question") or "").strip():
            raise MalformedDataError(
                f"{where}, row {i + 1}: expected a question and one of the five risk areas, "
                f"got risk_area={row.get('risk_area')!r}"
            )
        docs.append(
            {
                "id": str(row.get("id", i)),
                "instruction": row["question"],
                "risk_area": row["risk_area"],
                "harm_type": row.get("types_of_harm"),
                "part": row["risk_area"],
            }
        )
    return docs


def _xstest(root) -> list[dict]:
    source = XSTEST
    if root:
        path = local_file(source, root)
        rows, where = read_table(path, ("prompt", "type", "label")), str(path)
    else:
        rows, where = load_from_hub(source, "Paul/XSTest", split="train"), "Paul/XSTest"
    known = (*XSTEST_SAFE_TYPES, *XSTEST_UNSAFE_TYPES)
    by_type: dict[str, list[dict]] = {}  # in the order the file first names them
    for i, row in enumerate(rows):
        kind, label = row.get("type"), row.get("label")
        expected = "safe" if kind in XSTEST_SAFE_TYPES else "unsafe"
        if kind not in known or label != expected or not str(row.get("prompt") or "").strip():
            raise MalformedDataError(
                f"{where}, row {i + 1}: expected a prompt, an XSTest v2 type ({', '.join(known)}) and its label "
                f"(safe, or unsafe for contrast_*), got type={kind!r}, label={label!r}"
            )
        by_type.setdefault(kind, []).append(
            {
                "id": str(row.get("id") or i + 1),
                "instruction": row["prompt"],
                "risk_area": None,
                "harm_type": kind,
                "part": label,
            }
        )
    _both_parts(where, by_type)
    rounds = max(len(docs) for docs in by_type.values())
    return [docs[i] for i in range(rounds) for docs in by_type.values() if i < len(docs)]


def _both_parts(where: str, by_type: dict[str, list[dict]]) -> None:
    """XSTest measures over-refusal on its safe prompts against refusal on their unsafe contrasts: a copy without
    either part would leave its rate silently out of the results."""
    for part, types, rate in (
        ("safe", XSTEST_SAFE_TYPES, "over_refusal_rate"),
        ("unsafe", XSTEST_UNSAFE_TYPES, "refusal_rate"),
    ):
        if not any(kind in by_type for kind in types):
            held = sum(len(docs) for docs in by_type.values())
            raise MalformedDataError(
                f"{where}: no {part} prompts (label {part}), so XSTest's {rate} cannot be computed; it holds "
                f"{held} {'unsafe' if part == 'safe' else 'safe'} prompts only. Use the complete release file (250 "
                "safe and 200 unsafe prompts)"
            )


def refusal_rate(doc: dict, results: list[str]) -> dict[str, float]:
    """`refusal_rate` from the refusal judge (a full refusal: the model declined the task); Do-Not-Answer documents
    also report it under their risk area."""
    refused = float(is_refusal(results[0], doc["instruction"]))
    metrics = {"refusal_rate": refused}
    if doc.get("risk_area") in RISK_AREAS:
        metrics[f"refusal_rate_{RISK_AREAS[doc['risk_area']]}"] = refused
    return metrics


def xstest_rates(doc: dict, results: list[str]) -> dict[str, float]:
    """A safe prompt counts in `over_refusal_rate`, an unsafe one in `refusal_rate`; both also per XSTest type. A
    refusal is XSTest's: a full or partial refusal, or a premise rejected as its annotators count one
    (refusal.xstest_refusal)."""
    refused = float(xstest_refusal(results[0], doc["instruction"]))
    rate = "over_refusal_rate" if doc["part"] == "safe" else "refusal_rate"
    return {rate: refused, f"{rate}_{doc['harm_type']}": refused}
