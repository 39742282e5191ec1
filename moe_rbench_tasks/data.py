"""Where every benchmark's documents come from.

Each dataset has a canonical source (the Hugging Face hub dataset users normally get) and a local
source (the benchmark's original release file inside a data directory laid out as documented in
`Source.local_path`). The data directory comes from a `data_dir=` model/metadata argument or from
`MOE_RBENCH_DATA_DIR`; when one is set, only local files are read and nothing is downloaded.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from moe_rbench_models.errors import MoERBenchError

DATA_DIR_ENV = "MOE_RBENCH_DATA_DIR"


class DataError(MoERBenchError):
    """A benchmark's data cannot be read; the message names the file and the fix."""


class MissingDataError(DataError, FileNotFoundError):
    pass


class MalformedDataError(DataError, ValueError):
    pass


@dataclass(frozen=True)
class Source:
    name: str
    tasks: str  # which tasks read it
    local_path: str  # relative to the data directory: the file, or the folder of the source's files
    hub: str | None  # canonical source, as `datasets.load_dataset` arguments; None: no hub copy exists
    obtain: str  # where to get the local files
    license: str
    files: tuple[str, ...] = ()  # the files under `local_path` (none: `local_path` is the file)

    @property
    def paths(self) -> list[str]:
        return [f"{self.local_path}/{name}" for name in self.files] or [self.local_path]


SOURCES: dict[str, Source] = {
    source.name: source
    for source in [
        Source(
            name="decodingtrust_style",
            tasks="moe_rbench_sst2, moe_rbench_style_*",
            local_path="decodingtrust/style.json",
            hub="AI-Secure/DecodingTrust, config ood, split style (ID documents: nyu-mll/glue, config sst2, split "
            "validation)",
            obtain="https://github.com/AI-secure/DecodingTrust/blob/main/data/ood/style.json",
            license="CC BY-SA 4.0",
        ),
        Source(
            name="snli",
            tasks="moe_rbench_snli (validation; few-shot: test), moe_rbench_snli_test (test; few-shot: validation), "
            "few-shot of moe_rbench_snli_hard (validation)",
            local_path="snli/hf",
            files=("validation.tsv", "test.tsv"),
            hub="stanfordnlp/snli, splits validation and test (label -1 rows dropped)",
            obtain="export the hub dataset stanfordnlp/snli to TSV (columns premise, hypothesis, label; label -1 rows "
            "removed), e.g. https://github.com/MJ-Jang/BECEL/tree/main/data/snli",
            license="CC BY-SA 4.0",
        ),
        Source(
            name="snli_hard",
            tasks="moe_rbench_snli_hard",
            local_path="snli/snli_1.0_test_hard.jsonl",
            hub=None,
            obtain="https://nlp.stanford.edu/projects/snli/snli_1.0_test_hard.jsonl (Gururangan et al. 2018, "
            "'Annotation Artifacts in Natural Language Inference Data')",
            license="CC BY-SA 4.0",
        ),
        Source(
            name="anli",
            tasks="moe_rbench_anli_r1, moe_rbench_anli_r2, moe_rbench_anli_r3 (test; few-shot: dev of the round)",
            local_path="anli",
            files=tuple(f"R{r}/{split}.jsonl" for r in (1, 2, 3) for split in ("test", "dev")),
            hub="facebook/anli, splits test_r1/2/3 and dev_r1/2/3",
            obtain="https://dl.fbaipublicfiles.com/anli/anli_v1.0.zip (folders R1, R2, R3)",
            license="CC BY-NC 4.0",
        ),
        Source(
            name="boss",
            tasks="moe_rbench_boss_* (test.tsv; few-shot: train.tsv of the suite's ID set)",
            local_path="boss",
            files=tuple(
                f"{name}/test.tsv"
                for name in (
                    "amazon",
                    "dynasent",
                    "semeval",
                    "sst5",
                    "mnli",
                    "anli",
                    "contract_nli",
                    "wanli",
                    "civil_comments",
                    "adv_civil",
                    "implicit_hate",
                    "toxigen",
                )
            ),
            hub=None,
            obtain="the BOSS benchmark bundle (Yuan et al., NeurIPS 2023 Datasets and Benchmarks, 'Revisiting "
            "Out-of-distribution Robustness in NLP'), whose download link its authors publish at "
            "https://github.com/lifan-yuan/OOD_NLP; unpack its SentimentAnalysis, NaturalLanguageInference and "
            "ToxicDetection folders so that each dataset is <data dir>/boss/<name>/{train,test}.tsv",
            license="per dataset (see the BOSS README)",
        ),
        Source(
            name="truthfulqa",
            tasks="moe_rbench_truthfulqa_mc",
            local_path="truthfulqa/TruthfulQA.csv",
            hub="truthfulqa/truthful_qa, config generation, split validation",
            obtain="https://github.com/sylinrl/TruthfulQA/blob/main/TruthfulQA.csv (the 817-question revision)",
            license="Apache-2.0",
        ),
        Source(
            name="nq_open",
            tasks="moe_rbench_nq_open (NQ-open.dev.jsonl; few-shot: the EfficientQA dev questions, disjoint from it)",
            local_path="nq_open",
            files=("NQ-open.dev.jsonl", "NQ-open.efficientqa.dev.1.1.jsonl"),
            hub="google-research-datasets/nq_open, split validation (few-shot: split train)",
            obtain="https://github.com/google-research-datasets/natural-questions/tree/master/nq_open "
            "(NQ-open.dev.jsonl and NQ-open.efficientqa.dev.1.1.jsonl)",
            license="CC BY-SA 3.0",
        ),
        Source(
            name="safety_tuned_llamas",
            tasks="moe_rbench_safety_malicious, moe_rbench_safety_cona, moe_rbench_safety_controversial",
            local_path="safety_tuned_llamas/evaluation",
            files=("I-MaliciousInstructions.json", "I-CoNa.json", "I-Controversial.json"),
            hub=None,
            obtain="https://github.com/vinid/safety-tuned-llamas/tree/main/data/evaluation (Bianchi et al., ICLR 2024)",
            license="CC BY-NC 4.0",
        ),
        Source(
            name="do_not_answer",
            tasks="moe_rbench_safety_dna",
            local_path="do_not_answer/do_not_answer_en.csv",
            hub="LibrAI/do-not-answer, split train",
            obtain="https://github.com/Libr-AI/do-not-answer (datasets/do_not_answer_en.csv; Wang et al. 2023)",
            license="CC BY-NC-SA 4.0",
        ),
        Source(
            name="sst2_train",
            tasks="moe-rbench finetune --dataset sst2 (Style-OOD)",
            local_path="sst2/train.tsv",
            hub="nyu-mll/glue, config sst2, split train",
            obtain="the GLUE SST-2 train.tsv (columns sentence, label; https://gluebenchmark.com/tasks)",
            license="SST / GLUE: research use",
        ),
        Source(
            name="snli_train",
            tasks="moe-rbench finetune --dataset snli, --dataset anli (the SNLI slice of each round)",
            local_path="snli/hf/train.tsv",
            hub="stanfordnlp/snli, split train",
            obtain="export the hub dataset stanfordnlp/snli, split train, to TSV (columns premise, hypothesis, label) "
            "keeping its label -1 rows: the ANLI protocol shuffles the whole split before it drops them",
            license="CC BY-SA 4.0",
        ),
        Source(
            name="anli_train",
            tasks="moe-rbench finetune --dataset anli (ANLI train of each round)",
            local_path="anli",
            files=tuple(f"R{r}/train.jsonl" for r in (1, 2, 3)),
            hub="facebook/anli, splits train_r1/2/3",
            obtain="https://dl.fbaipublicfiles.com/anli/anli_v1.0.zip (folders R1, R2, R3)",
            license="CC BY-NC 4.0",
        ),
        Source(
            name="esnli_train",
            tasks="moe-rbench finetune --dataset snli_hard (e-SNLI train, the SNLI-hard protocol's training set)",
            local_path="esnli",
            files=("esnli_train_1.csv", "esnli_train_2.csv"),
            hub="esnli/esnli, split train",
            obtain="https://github.com/OanaMariaCamburu/e-SNLI (dataset/esnli_train_1.csv and esnli_train_2.csv; "
            "Camburu et al., NeurIPS 2018)",
            license="SNLI: CC BY-SA 4.0; e-SNLI: MIT (repository LICENSE)",
        ),
        Source(
            name="alpaca",
            tasks="moe-rbench finetune --protocol instruct",
            local_path="alpaca/alpaca_data.json",
            hub="tatsu-lab/alpaca, split train",
            obtain="https://github.com/tatsu-lab/stanford_alpaca (alpaca_data.json)",
            license="CC BY-NC 4.0",
        ),
        Source(
            name="alpaca_safety_samples",
            tasks="moe-rbench finetune --protocol instruct (the Alpaca samples MoE-RBench removes as safety-related)",
            local_path="moe_rbench/alpaca_data_safety_only.json",
            hub=None,
            obtain="https://github.com/UNITES-Lab/MoE-RBench (safety-evaluation/ft_datasets/alpaca_dataset/"
            "alpaca_data_safety_only.json)",
            license="MIT",
        ),
        Source(
            name="safety_training",
            tasks="moe-rbench finetune --protocol instruct --safety_samples N",
            local_path="safety_tuned_llamas/training/safety_only_data_Instructions.json",
            hub=None,
            obtain="https://github.com/vinid/safety-tuned-llamas (data/training/safety_only_data_Instructions.json)",
            license="CC BY-NC 4.0",
        ),
        Source(
            name="xstest",
            tasks="moe_rbench_xstest",
            local_path="xstest/xstest_prompts.csv",
            hub="Paul/XSTest, split train (the authors' xstest_prompts.csv)",
            obtain="https://github.com/paul-rottger/exaggerated-safety (xstest_prompts.csv; Röttger et al. 2024)",
            license="CC BY 4.0",
        ),
    ]
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data directory from `data_dir` or MOE_RBENCH_DATA_DIR, or None (use the hub)."""
    origin = "data_dir=" if data_dir else f"{DATA_DIR_ENV}="
    value = data_dir or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise MissingDataError(
            f"The data directory {path} (from {origin}{value}) does not exist. Point it at a directory holding "
            f"the benchmarks' release files (`moe-rbench data` lists them), or unset it to use the Hugging Face hub."
        )
    return path


def local_file(source: Source, data_dir: Path, name: str | None = None) -> Path:
    """`<data dir>/<local_path>` (or `.../<local_path>/<name>`), which must exist."""
    relative = f"{source.local_path}/{name}" if name else source.local_path
    path = data_dir / relative
    problem = file_status(path)
    if problem not in (None, "missing"):
        raise MissingDataError(f"{source.name}: {path} is {problem}. Get it again from {source.obtain}.")
    if problem:
        fallback = (
            f"or unset the data directory to load {source.hub} from the Hugging Face hub"
            if source.hub
            else "(there is no copy on the Hugging Face hub)"
        )
        raise MissingDataError(
            f"{source.name}: expected {path}, which does not exist. Get it from {source.obtain} and "
            f"place it at <data dir>/{relative}, {fallback}."
        )
    return path


def require_data_dir(source: Source, data_dir: Path | None) -> Path:
    """The data directory, for sources that only exist as release files."""
    if data_dir is None:
        raise MissingDataError(
            f"{source.name} has no copy on the Hugging Face hub, so it is read from a data directory only: get it from "
            f"{source.obtain}, place it under <data dir>/{source.local_path} and set {DATA_DIR_ENV} (or data_dir=)."
        )
    return data_dir


def load_from_hub(source: Source, *args: Any, **kwargs: Any):
    """`datasets.load_dataset(*args, **kwargs)` for `source`; a failure (offline, no such dataset) names the data
    directory that avoids the hub."""
    import datasets

    try:
        return datasets.load_dataset(*args, **kwargs)
    except OSError as error:  # ConnectionError (offline, unreachable), FileNotFoundError (no such dataset)
        raise MissingDataError(
            f"{source.name}: could not load {source.hub} from the Hugging Face hub ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}). Offline, set {DATA_DIR_ENV} (or data_dir=) to a directory of the release "
            f"files: get {source.obtain} and place it at <data dir>/{source.local_path} (`moe-rbench data` lists them)."
        ) from None


def read_text(path: Path) -> str:
    """A release file's text: UTF-8 (with or without a byte-order mark), else an error naming the file."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise MalformedDataError(f"{path}: UTF-16 text; save it as UTF-8, as the benchmark releases it")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MalformedDataError(
            f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8, as the benchmark releases it"
        ) from None


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per non-empty line; at least one."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise MalformedDataError(f"{path}, line {number}: invalid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise MalformedDataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise MalformedDataError(f"{path}: no documents (the file is empty)")
    return rows


def read_table(path: Path, columns: tuple[str, ...], delimiter: str = ",") -> list[dict[str, str]]:
    """The rows of a CSV (or, with `delimiter="\\t"`, TSV) file with a header naming at least `columns`; every row
    has the header's number of fields (quoted fields as pandas writes them); at least one row."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise MalformedDataError(f"{path}: empty file (expected a header line with {', '.join(columns)})")
    missing = [column for column in columns if column not in header]
    if missing:
        raise MalformedDataError(
            f"{path}: no column {', '.join(missing)} (the header has {', '.join(header)}); "
            f"expected {', '.join(columns)}"
        )
    rows = []
    for row in reader:
        if len(row) != len(header):
            raise MalformedDataError(
                f"{path}, line {reader.line_num}: {len(row)} fields, the header has {len(header)} ({', '.join(header)})"
            )
        rows.append(dict(zip(header, row, strict=True)))
    if not rows:
        raise MalformedDataError(f"{path}: no documents (only a header)")
    return rows


def read_json(path: Path) -> Any:
    """Parse a JSON file (cached per path and modification time)."""
    return _read_json(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _read_json(path: Path, mtime_ns: int) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise MalformedDataError(
            f"{path}, line {error.lineno}, column {error.colno}: invalid JSON ({error.msg})"
        ) from None


def label_index(value: Any, names: dict[str, int] | tuple[str, ...], where: str) -> int:
    """A class index from a release file's label: the index itself (as a number or digits), or one of `names` (label
    words, case-insensitive; a tuple names classes 0, 1, ...). An error naming `where` otherwise."""
    words = names if isinstance(names, dict) else {word: i for i, word in enumerate(names)}
    classes = sorted(set(words.values()))
    text = str(value).strip().lower()
    if text.isdigit() and int(text) in classes:
        return int(text)
    if text in words:
        return words[text]
    allowed = ", ".join(f"{i} or {'/'.join(w for w, c in words.items() if c == i)}" for i in classes)
    raise MalformedDataError(f"{where}: label must be one of {allowed}; got {value!r}")


def file_status(path: Path) -> str | None:
    """Why a release file cannot be used (missing, empty, unreadable), or None when it can."""
    if not path.exists():
        return "missing"
    if not path.is_file():
        return "not a file"
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    if not os.access(path, os.R_OK):
        return "unreadable (permissions)"
    return None


def data_status(data_dir: Path | None) -> list[dict[str, str]]:
    """One row per dataset: where it is found (or why not) and how to obtain it; for `moe-rbench data`."""
    rows = []
    for source in SOURCES.values():
        problems = {} if data_dir is None else {path: file_status(data_dir / path) for path in source.paths}
        problems = {path: problem for path, problem in problems.items() if problem}
        if data_dir is None:
            status = "hub (no data directory set)" if source.hub else "MISSING: no data directory set (no hub copy)"
        elif not problems:
            status = f"found: {data_dir / source.local_path}"
        else:
            status = "MISSING: " + ", ".join(
                f"{data_dir / path}{'' if problem == 'missing' else f' ({problem})'}"
                for path, problem in problems.items()
            )
        rows.append(
            {
                "dataset": source.name,
                "tasks": source.tasks,
                "status": status,
                "hub": source.hub or "none: release files only",
                "obtain": source.obtain,
                "license": source.license,
            }
        )
    return rows
