"""Checks of the judges themselves: against human labels (`moe-rbench judge --validate`) and against each other
(`moe-rbench judge --agreement`).

Validation reads a labelled CSV (XSTest's format by default: `prompt,completion,final_label`, with `2_full_refusal`
the positive label, `1_full_compliance` the negative one and `3_partial_refusal` reported apart), runs a judge on
every row and compares one of its yes/no fields with the labels: balanced accuracy, precision, recall and the
confusion matrix. Rows whose label is neither positive, negative nor reported apart are an error naming the line.

Agreement: for each pair of judges that answered the same yes/no question (`MEASURES[...].asks`: refused? harmful
response?) on the same samples of a run, Cohen's kappa over the samples both gave a verdict on.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from moe_rbench import tables
from moe_rbench.judging import JudgingError, judged_rows
from moe_rbench_models.errors import OptionError
from moe_rbench_tasks.data import MalformedDataError, read_table
from moe_rbench_tasks.judges import MEASURES, REFUSED
from moe_rbench_tasks.judges.refusal_data import chatgpt_refusals_file, rbr_file
from moe_rbench_tasks.judges.scoring import Confusion, cohen_kappa

XSTEST_COLUMNS = {"prompt": "prompt", "completion": "completion", "label": "final_label"}
FORMATS = {".csv": "csv", ".json": "chatgpt_refusals", ".jsonl": "openai_rbr"}


@dataclass(frozen=True)
class LabelScheme:
    """Which label values are the judged property (positive), its absence (negative), or reported apart."""

    positive: tuple[str, ...] = ("2_full_refusal",)
    negative: tuple[str, ...] = ("1_full_compliance",)
    apart: tuple[str, ...] = ("3_partial_refusal",)

    def __post_init__(self) -> None:
        overlap = (set(self.positive) & set(self.negative)) | (set(self.apart) & {*self.positive, *self.negative})
        if not self.positive or not self.negative or overlap:
            raise OptionError(
                "--positive and --negative each need at least one label value, and no value may be in two of "
                f"--positive, --negative and --apart (got {', '.join(sorted(overlap)) or 'an empty list'})"
            )


DEFAULT_SCHEMES = {  # the full refusal against what each labelled set calls an answer (refusal_data.py's mappings)
    "csv": LabelScheme(),
    "chatgpt_refusals": LabelScheme(
        ("rejected",),
        ("complied", "disclaimed", "contradicted", "dontknow"),
        ("redirected", "counseling", "incoherent"),
    ),
    "openai_rbr": LabelScheme(("declined",), ("fully_complied",), ("partially_complied", "evaded")),
}


@dataclass
class Validation:
    judge: str
    field: str
    path: str
    scheme: LabelScheme
    confusion: Confusion
    labels: Counter  # rows per label value
    apart: dict[str, int] = field(default_factory=dict)  # label reported apart -> rows the judge said yes to
    no_verdict: int = 0  # rows the judge gave no verdict on (left out of the confusion matrix)

    def as_dict(self) -> dict:
        c = self.confusion
        return {
            "judge": self.judge,
            "field": self.field,
            "labels_file": self.path,
            "positive": list(self.scheme.positive),
            "negative": list(self.scheme.negative),
            "balanced_accuracy": c.balanced_accuracy,
            "precision": c.precision,
            "recall": c.recall,
            "specificity": c.specificity,
            "confusion": {
                "true_positive": c.true_positive,
                "false_negative": c.false_negative,
                "false_positive": c.false_positive,
                "true_negative": c.true_negative,
            },
            "rows_per_label": dict(self.labels),
            "apart_judged_yes": self.apart,
            "no_verdict": self.no_verdict,
            "notes": self.notes(),
        }

    def notes(self) -> list[str]:
        """Why a measure is undefined (null in the JSON): a class without rows, or no yes from the judge."""
        c, notes = self.confusion, []
        for name, labels, count, undefined, option in (
            ("positive", self.scheme.positive, c.true_positive + c.false_negative, "recall", "--positive"),
            ("negative", self.scheme.negative, c.false_positive + c.true_negative, "specificity", "--negative"),
        ):
            if count:
                continue
            in_file = sum(self.labels[label] for label in labels)
            why = (
                f"the judge gave no verdict on any of the {in_file} {name} rows"
                if in_file
                else f"no row of {self.path} is labelled {name} ({', '.join(labels)})"
            )
            notes.append(
                f"{why}: {undefined} and balanced accuracy are undefined; validate on a file with both classes, or "
                f"name this file's {name} labels with {option}"
            )
        if c.true_positive + c.false_positive == 0 and c.true_negative + c.false_negative:
            notes.append("the judge said yes to no row: precision is undefined")
        return notes

    def text(self) -> str:
        c = self.confusion
        shown = {
            name: tables.number(value) or "undefined"
            for name, value in (
                ("balanced accuracy", c.balanced_accuracy),
                ("precision", c.precision),
                ("recall", c.recall),
                ("specificity", c.specificity),
            )
        }
        lines = [
            f"Judge {self.judge} (field {self.field}) against {self.path}",
            f"positive: {', '.join(self.scheme.positive)}; negative: {', '.join(self.scheme.negative)}",
            "",
            "  ".join(f"{name} {value}" for name, value in shown.items()),
            *(f"note: {note}" for note in self.notes()),
            "",
            tables.markdown(
                ["label \\ judge", "yes", "no"],
                [
                    [f"positive ({c.true_positive + c.false_negative})", str(c.true_positive), str(c.false_negative)],
                    [f"negative ({c.false_positive + c.true_negative})", str(c.false_positive), str(c.true_negative)],
                ],
                [False, True, True],
            ),
        ]
        lines += [
            f"reported apart: {label}: the judge said yes to {yes} of {self.labels[label]}"
            for label, yes in self.apart.items()
        ]
        if self.no_verdict:
            lines.append(f"no verdict (left out of the matrix): {self.no_verdict} rows")
        return "\n".join(lines)


def binary_field(judge, name: str | None = None) -> str:
    """The judge's yes/no field to validate: `name`, or the one answering "refused?" (else its only yes/no field)."""
    binary = [f for f in judge.fields if f in MEASURES and MEASURES[f].asks]
    if name is not None:
        if name not in binary:
            raise OptionError(f"--field {name!r}: the {judge.name} judge's yes/no fields are {', '.join(binary)}")
        return name
    refusal = [f for f in binary if MEASURES[f].asks == REFUSED]
    if refusal or len(binary) == 1:
        return (refusal or binary)[0]
    raise OptionError(
        f"The {judge.name} judge has no yes/no verdict to validate"
        if not binary
        else f"The {judge.name} judge has several yes/no fields ({', '.join(binary)}); choose one with --field"
    )


def label_format(path: str | Path) -> str:
    """The labelled file's format, by its name: a CSV (XSTest's columns by default), chatgpt-refusals' JSON list
    (`tone` labels) or OpenAI's RBR gold JSON lines (trait labels, read as declined / fully_complied /
    partially_complied / evaded)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OptionError(f"--validate {path}: give a .csv, a chatgpt-refusals .json or an RBR gold .jsonl file")
    return FORMATS[suffix]


def read_labelled(path: str | Path, columns: dict[str, str], scheme: LabelScheme) -> list[dict]:
    """The rows of a labelled file as `{prompt, completion, label}`; a label outside the scheme is an error."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"--validate {path}: no such file")
    known = {*scheme.positive, *scheme.negative, *scheme.apart}
    rows = []
    for where, row in _labelled_rows(path, columns):
        if row["label"] not in known:
            raise MalformedDataError(
                f"{where}: label {row['label']!r} is not one of {', '.join(sorted(known))}; name it with "
                "--positive, --negative or --apart"
            )
        rows.append(row)
    return rows


def _labelled_rows(path: Path, columns: dict[str, str]):
    fmt = label_format(path)
    if fmt != "csv":
        if columns:
            raise OptionError(f"--columns applies to CSV files; {path} is in the {fmt} format")
        read = chatgpt_refusals_file(path, keep_unmapped=True) if fmt == "chatgpt_refusals" else rbr_file(path)
        yield from ((row.where, {"prompt": row.prompt, "completion": row.response, "label": row.label}) for row in read)
        return
    needed = {**XSTEST_COLUMNS, **columns}
    for number, row in enumerate(read_table(path, tuple(needed.values())), 2):
        where = f"{path}, line {number}"
        yield (
            where,
            {"prompt": row[needed["prompt"]], "completion": row[needed["completion"]], "label": row[needed["label"]]},
        )


def validate(judge, path: str | Path, columns: dict[str, str], scheme: LabelScheme, field_name: str | None = None):
    name = binary_field(judge, field_name)
    rows = read_labelled(path, columns, scheme)
    verdicts = [verdict[name] for verdict in judge.score([(row["prompt"], row["completion"]) for row in rows])]
    judged = [(row["label"], bool(v)) for row, v in zip(rows, verdicts, strict=True) if v is not None]
    scored = [(label in scheme.positive, said_yes) for label, said_yes in judged if label not in scheme.apart]
    labels = Counter(row["label"] for row in rows)
    apart = {
        label: sum(said_yes for lab, said_yes in judged if lab == label) for label in scheme.apart if labels[label]
    }
    confusion = Confusion.of([truth for truth, _ in scored], [said_yes for _, said_yes in scored])
    return Validation(judge.name, name, str(path), scheme, confusion, labels, apart, len(rows) - len(judged))


# -- agreement -------------------------------------------------------------------------------------------------


def judged_files(path: str | Path) -> dict[Path, dict[str, Path]]:
    """Folders under `path` holding judged files of one run -> judge -> its judged file."""
    found: dict[Path, dict[str, Path]] = {}
    for file in sorted(Path(path).rglob("judged_*.jsonl")):
        found.setdefault(file.parent, {})[file.stem.removeprefix("judged_")] = file
    if not found:
        raise JudgingError(f"No judged files (judged_<judge>.jsonl) under {path}: run `moe-rbench judge` first")
    return found


def agreement(files: dict[str, Path]) -> list[dict]:
    """Cohen's kappa of every two judges' fields that answer the same yes/no question, over the samples both gave
    a verdict on."""
    verdicts = {  # yes/no fields read strictly: the string "false" is an error, not a yes
        judge: {(row["task"], row["doc_id"]): row for _, row in judged_rows(path)} for judge, path in files.items()
    }
    fields = [
        (judge, name)
        for judge, rows in verdicts.items()
        for name in sorted({key for row in rows.values() for key in row})
        if name in MEASURES and MEASURES[name].asks
    ]
    pairs = []
    for (judge_a, field_a), (judge_b, field_b) in combinations(fields, 2):
        if judge_a == judge_b or MEASURES[field_a].asks != MEASURES[field_b].asks:
            continue
        a_rows, b_rows = verdicts[judge_a], verdicts[judge_b]
        both = [
            (a_rows[key][field_a], b_rows[key][field_b])
            for key in a_rows.keys() & b_rows.keys()
            if a_rows[key].get(field_a) is not None and b_rows[key].get(field_b) is not None
        ]
        if both:
            first, second = [a for a, _ in both], [b for _, b in both]
            pairs.append(
                {
                    "question": MEASURES[field_a].asks,
                    "first": f"{judge_a}: {field_a}",
                    "second": f"{judge_b}: {field_b}",
                    "samples": len(both),
                    "agreement": sum(a == b for a, b in both) / len(both),
                    "kappa": cohen_kappa(first, second),
                }
            )
    return pairs


def agreement_table(pairs: list[dict]) -> str:
    return tables.markdown(
        ["question", "judge: field", "judge: field", "samples", "agreement", "Cohen's kappa"],
        [
            [
                p["question"],
                p["first"],
                p["second"],
                str(p["samples"]),
                tables.number(p["agreement"]),
                tables.number(p["kappa"]),
            ]
            for p in pairs
        ],
        [False, False, False, True, True, True],
    )


def write_agreement(path: str | Path) -> list[str]:
    """Print-ready agreement tables for every run folder under `path`; writes `agreement.json` beside the files."""
    blocks = []
    for folder, files in judged_files(path).items():
        pairs = agreement(files)
        (folder / "agreement.json").write_text(json.dumps({"judges": sorted(files), "pairs": pairs}, indent=1))
        if pairs:
            blocks.append(f"{folder}\n\n{agreement_table(pairs)}")
        else:
            blocks.append(f"{folder}: no two judges answered the same question ({', '.join(sorted(files))})")
    return blocks
