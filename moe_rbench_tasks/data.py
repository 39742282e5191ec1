"""Where every benchmark's documents come from: what a data source is (`Source`; each family folder declares its
own, moe_rbench_tasks.families.SOURCES collects them) and how its files are found and read.

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
    """One row per dataset of every family (moe_rbench_tasks.families.SOURCES): where it is found (or why not) and
    how to obtain it; for `moe-rbench data`."""
    from moe_rbench_tasks.families import SOURCES  # the registry imports the families, which import this module

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
