"""Where every benchmark's documents come from.

Each dataset has a canonical source (the Hugging Face hub dataset users normally get) and a local
source (the benchmark's original release file inside a data directory laid out as documented in
`Source.local_path`). The data directory comes from a `data_dir=` model/metadata argument or from
`MOE_RBENCH_DATA_DIR`; when one is set, only local files are read and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "MOE_RBENCH_DATA_DIR"


class DataError(Exception):
    """A benchmark's data cannot be read; the message names the file and the fix."""


class MissingDataError(DataError, FileNotFoundError):
    pass


class MalformedDataError(DataError, ValueError):
    pass


@dataclass(frozen=True)
class Source:
    name: str
    tasks: str  # which tasks read it
    local_path: str  # relative to the data directory
    hub: str  # canonical source, as `datasets.load_dataset` arguments
    obtain: str  # where to get the local file
    license: str


SOURCES: dict[str, Source] = {
    source.name: source
    for source in [
        Source(
            name="decodingtrust_style",
            tasks="moe_rbench_sst2, moe_rbench_style_*",
            local_path="decodingtrust/style.json",
            hub="AI-Secure/DecodingTrust, config ood, split style (ID documents: nyu-mll/glue, config sst2, split validation)",
            obtain="https://github.com/AI-secure/DecodingTrust/blob/main/data/ood/style.json",
            license="CC BY-SA 4.0",
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


def local_file(source: Source, data_dir: Path) -> Path:
    path = data_dir / source.local_path
    if not path.is_file():
        raise MissingDataError(
            f"{source.name}: expected {path}, which does not exist. Get it from {source.obtain} and place it at "
            f"<data dir>/{source.local_path}, or unset the data directory to load {source.hub} from the "
            f"Hugging Face hub."
        )
    return path


def read_json(path: Path) -> Any:
    """Parse a JSON file (cached per path and modification time)."""
    return _read_json(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _read_json(path: Path, mtime_ns: int) -> Any:
    try:
        with path.open(encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise MalformedDataError(f"{path}, line {error.lineno}, column {error.colno}: invalid JSON ({error.msg})") from None


def data_status(data_dir: Path | None) -> list[dict[str, str]]:
    """One row per dataset: where it is found (or why not) and how to obtain it; for `moe-rbench data`."""
    rows = []
    for source in SOURCES.values():
        if data_dir is None:
            status = "hub (no data directory set)"
        elif (data_dir / source.local_path).is_file():
            status = f"found: {data_dir / source.local_path}"
        else:
            status = f"MISSING: {data_dir / source.local_path}"
        rows.append({"dataset": source.name, "tasks": source.tasks, "status": status, "hub": source.hub,
                     "obtain": source.obtain, "license": source.license})
    return rows
