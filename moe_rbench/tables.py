"""The one way moe-rbench writes tables and figures: markdown for people (reports, CI logs), CSV and JSON for
programs, PNG and SVG figures; used by report, compare, trace and judge.
"""

from __future__ import annotations

import csv
import json
import math
import secrets
from pathlib import Path
from typing import Any

from moe_rbench_models.errors import MoERBenchError


class OutputError(MoERBenchError, RuntimeError):
    """An output directory that cannot be written; the message names it and the fix."""


def check_output_directory(path: str | Path, option: str = "--out") -> Path:
    """`path` is a directory that can be written, or one that can be made: checked before any work, leaving nothing
    behind (an error naming `option` otherwise)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise OutputError(f"{option} {path} {where}; give a directory for the output")
    probe = existing / f".moe-rbench-probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as error:
        raise OutputError(
            f"{option} {path}: cannot write in {existing} ({error.strerror}); choose a directory you can write to"
        ) from None
    return path


class _WriteErrors:
    """Turns an OSError while writing an output file into an OutputError naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, OSError):
            raise OutputError(
                f"Could not write {self.path} ({error.strerror or error}); free space (or fix permissions), or choose "
                "another --out"
            ) from None
        return False


def number(value: Any, digits: int = 4, signed: bool = False) -> str:
    """A number as the tables show it; "" for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, int)) or not isinstance(value, float):
        return str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def estimate(value: Any, stderr: Any) -> str:
    """A number with its standard error, as the tables show it ("0.4200 ± 0.0310"; the number alone without one)."""
    shown, error = number(value), number(stderr)
    return f"{shown} ± {error}" if shown and error else shown


def markdown(header: list[str], rows: list[list[str]], numeric: list[bool] | None = None) -> str:
    """A markdown table; `numeric[i]` right-aligns column i."""
    numeric = numeric or [False] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_table(directory: Path, name: str, fields: list[str], records: list[dict], text: str, meta: dict) -> list[Path]:
    """`<name>.md` (the markdown `text`), `<name>.csv` (`records` under `fields`) and `<name>.json` (`meta` and the
    records as `rows`) in `directory`."""
    with _WriteErrors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.{suffix}" for suffix in ("md", "csv", "json")]
    with _WriteErrors(paths[0]):
        paths[0].write_text(text, encoding="utf-8")
    with _WriteErrors(paths[1]), paths[1].open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    with _WriteErrors(paths[2]):
        paths[2].write_text(json.dumps({**meta, "rows": records}, indent=1), encoding="utf-8")
    return paths


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path, suffixes: tuple[str, ...] = (".png", ".svg")) -> list[Path]:
    """Write `figure` as `path` with each suffix, and close it."""
    paths = [path.with_suffix(suffix) for suffix in suffixes]
    try:
        for target in paths:
            with _WriteErrors(target):
                figure.savefig(target, dpi=120)
    finally:
        pyplot().close(figure)
    return paths
