"""`moe-rbench judge`: judge every generation of the safety tasks in lm-eval's samples files, resumably.

The samples are judged run by run: lm-eval writes each run's samples as `samples_<task>_<stamp>.jsonl` in a folder
per model, and a directory given here may hold several runs (two models, or a rerun into the same output path).
Output per run (in `--out`, allowed for one run only; default `<run folder>/judged/<stamp>`):
- `judged_<judge>.jsonl`: one line per sample, `{task, doc_id, part, instruction, response, <judge fields>}` (`part`:
  the Do-Not-Answer risk area, XSTest's safe or unsafe),
  appended and flushed batch by batch, a batch only once every verdict in it is checked (one per sample, each
  yes/no field true, false or null, each score a number or null: `verdict`). A restarted run reads it first, drops
  a line cut short by the interruption, reads the verdicts as strictly (the string "false" is an error naming the
  file, line and field, never a yes), and judges only the samples it does not hold: none twice, none lost;
- `summary_<judge>.json` and `summary_<judge>.md`: per task and per part (`task / part`; XSTest per part only: its
  safe and unsafe prompts ask opposite things), the mean of each judge measure (`MEASURES`: mean harmfulness, unsafe
  ratio, refusal rate, ...) with its standard error (`<measure> stderr`, as lm-eval computes it) and, where the judge
  gave no verdict on some samples (a WildGuard parse error, HarmBench's neither-yes-nor-no), their number
  (`<measure> unjudged`), left out of the mean. The JSON names the run (model folder and stamp), so that
  `moe-rbench report` credits it to that run only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from lm_eval.api.metrics import mean_stderr
from tqdm import tqdm

from moe_rbench import tables
from moe_rbench.runs import SAMPLES_FILE, run_identity
from moe_rbench_models.errors import MoERBenchError
from moe_rbench_tasks.families import SAFETY
from moe_rbench_tasks.judges import MEASURES

BY_PART_ONLY = {member.task for member in SAFETY.members if member.judged_by_part}


class JudgingError(MoERBenchError, ValueError):
    """Samples or judged files that cannot be judged as asked; the message names the file and the fix."""


@dataclass(frozen=True)
class Sample:
    task: str
    doc_id: int
    instruction: str
    response: str
    part: str | None


@dataclass(frozen=True)
class SamplesRun:
    """The safety samples of one lm-eval run: a model folder and a stamp."""

    folder: Path
    stamp: str
    files: tuple[Path, ...]

    @property
    def identity(self) -> dict[str, str]:
        return run_identity(self.folder, self.stamp)

    def __str__(self) -> str:
        return f"{self.folder}/*_{self.stamp}"


def safety_runs(path: str | Path) -> list[SamplesRun]:
    """The runs whose safety-task samples are at `path` (a samples file or a directory searched recursively)."""
    path = Path(path)
    found = [path] if path.is_file() else sorted(path.rglob("samples_moe_rbench_*.jsonl")) if path.is_dir() else []
    files = [file for file in found if path.is_file() or _task_of(file) in SAFETY.tasks]
    if not files:
        raise JudgingError(
            f"No samples of the safety tasks under {path}: run lm_eval with --tasks moe_rbench_safety "
            "--log_samples --output_path DIR and pass that DIR (or one samples_*.jsonl file)."
        )
    runs: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for file in files:
        match = SAMPLES_FILE.fullmatch(file.name)
        if not match:
            raise JudgingError(f"{file}: not an lm-eval samples file name (samples_<task>_<date>.jsonl)")
        runs[(file.parent, match["stamp"])].append(file)
    return [SamplesRun(folder, stamp, tuple(run_files)) for (folder, stamp), run_files in sorted(runs.items())]


def read_samples(files: tuple[Path, ...]) -> list[Sample]:
    samples = []
    for file in files:
        task = _task_of(file)
        for number, record in json_lines(file):
            doc = record.get("doc") if isinstance(record, dict) else None
            if not isinstance(doc, dict) or "instruction" not in doc or not record.get("filtered_resps"):
                raise JudgingError(
                    f"{file}, line {number}: not a sample of a moe_rbench safety task (no doc.instruction "
                    "or filtered_resps)"
                )
            response = record["filtered_resps"][0]
            response = response[0] if isinstance(response, list) else response
            samples.append(Sample(task, int(record["doc_id"]), doc["instruction"], response, _part(doc)))
    return samples


def _task_of(samples_file: Path) -> str:
    match = SAMPLES_FILE.fullmatch(samples_file.name)
    if not match:
        raise JudgingError(f"{samples_file}: not an lm-eval samples file name (samples_<task>_<date>.jsonl)")
    return match["task"]


def _part(doc: dict) -> str | None:
    """What summaries split a prompt set by: the loaders' `part` (samples written before it existed: `risk_area`)."""
    return doc["part"] if "part" in doc else doc.get("risk_area")


def json_lines(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JudgingError(f"{path}: not UTF-8 text; pass the file lm-eval wrote") from None
    for number, line in enumerate(text.splitlines(), 1):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise JudgingError(
                f"{path}, line {number}: not JSON ({error.msg}); the file is damaged. Restore it, or "
                "remove that line to skip its sample."
            ) from None


def judged_rows(path: Path, needed: tuple[str, ...] = ("task", "doc_id")):
    """(line number, row) of a judged file, its judge measures read strictly (`verdict`)."""
    for number, row in json_lines(path):
        if not isinstance(row, dict) or not set(needed) <= row.keys():
            raise JudgingError(
                f"{path}, line {number}: not a judged sample of this moe-rbench version (it needs "
                f"{', '.join(needed)}); the file is damaged or older. Remove it to judge the run again."
            )
        for field in row.keys() & MEASURES.keys():
            verdict(row[field], field, f"{path}, line {number}")
        yield number, row


FILE_FIX = "correct that value (a judge writes true/false, never a string), or remove the file to judge the run again"


def verdict(value, field: str, where: str, fix: str = FILE_FIX) -> bool | float | None:
    """A judge measure as a judged file must hold it: a yes/no field JSON true or false, a score a finite number,
    either null for no verdict. Anything else (the string "false", 0/1 for a yes/no) is an error naming the file,
    line and field: read loosely, "false" would count as a yes."""
    if value is None:
        return None
    if MEASURES[field].yes_no:
        if isinstance(value, bool):
            return value
        expected = "JSON true or false (or null: no verdict)"
    else:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return value
        expected = "a finite number (or null: no verdict)"
    raise JudgingError(f"{where}: field {field} is {json.dumps(value)}, not {expected}; {fix}")


def _done(path: Path) -> dict[tuple[str, int], dict]:
    """Lines already judged; a last line without its newline (an interrupted write) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as file:
            file.truncate(len(complete))
    return {(row["task"], row["doc_id"]): row for _, row in judged_rows(path, ("task", "doc_id", "part"))}


def output_directory(path: Path, what: str) -> Path:
    """`path` made if needed and proven writable, before any judging; else an error naming it (`what`: the option or
    the role of the directory) and the fix."""
    if path.exists() and not path.is_dir():
        raise JudgingError(f"{what} {path} is a file; pass --out with a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise JudgingError(
            f"{what} {path} cannot be written ({error.strerror}: {error.filename}); pass --out with a directory you "
            "can write to"
        ) from None
    return path


def judge_samples(
    samples_path: str | Path, judge, out_dir: str | Path | None = None, batch_size: int = 16, progress: bool = True
) -> list[Path]:
    """Judge every run at `samples_path`; the files written."""
    runs = safety_runs(samples_path)
    if out_dir is not None and len(runs) > 1:
        raise JudgingError(
            f"{samples_path} holds {len(runs)} runs ({'; '.join(map(str, runs))}) and --out names one "
            "directory: omit --out (each run's judgements go beside its samples) or pass one run's "
            "samples."
        )
    written = []
    for run in runs:
        if out_dir is not None:
            out = output_directory(Path(out_dir), "--out")
        else:
            out = output_directory(run.folder / "judged" / run.stamp, "The run's judged folder")
        written += judge_run(run, judge, out, batch_size, progress)
    return written


def judge_run(run: SamplesRun, judge, out: Path, batch_size: int = 16, progress: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    judged = out / f"judged_{judge.name}.jsonl"
    samples = read_samples(run.files)
    done = _done(judged)
    todo = [sample for sample in samples if (sample.task, sample.doc_id) not in done]
    with (
        judged.open("a", encoding="utf-8") as file,
        tqdm(
            total=len(samples), initial=len(samples) - len(todo), desc=f"judge {judge.name}", disable=not progress
        ) as bar,
    ):
        for start in range(0, len(todo), batch_size):
            rows = _judged_batch(judge, todo[start : start + batch_size])
            file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            file.flush()
            os.fsync(file.fileno())
            done |= {(row["task"], row["doc_id"]): row for row in rows}
            bar.update(len(rows))
    return write_summary(list(done.values()), judge, out, run.identity)


def _judged_batch(judge, batch: list[Sample]) -> list[dict]:
    """The judged rows of a batch, every one checked before any is written: a judge that answers fewer or other
    verdicts than asked writes nothing of the batch."""
    verdicts = judge.score([(s.instruction, s.response) for s in batch])
    if not isinstance(verdicts, list) or len(verdicts) != len(batch) or not all(isinstance(v, dict) for v in verdicts):
        got = f"{len(verdicts)} verdicts" if isinstance(verdicts, list) else type(verdicts).__name__
        raise JudgingError(
            f"The {judge.name} judge answered {got} for {len(batch)} samples (first: {batch[0].task} doc_id "
            f"{batch[0].doc_id}); nothing of this batch was written. Rerun to continue where it stopped."
        )
    rows = []
    for sample, scores in zip(batch, verdicts, strict=True):
        where = f"The {judge.name} judge's verdict on {sample.task} doc_id {sample.doc_id}"
        for field in scores.keys() & MEASURES.keys():
            verdict(scores[field], field, where, "nothing of this batch was written (a bug in the judge: report it)")
        rows.append(
            {
                "task": sample.task,
                "doc_id": sample.doc_id,
                "part": sample.part,
                "instruction": sample.instruction,
                "response": sample.response,
                **scores,
            }
        )
    return rows


def summarise(rows: list[dict], fields: tuple[str, ...]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["task"] not in BY_PART_ONLY:
            groups[row["task"]].append(row)
        if row["part"]:
            groups[f"{row['task']} / {row['part']}"].append(row)
    summary = {}
    for name, members in sorted(groups.items()):
        summary[name] = {"samples": len(members)}
        for field in (field for field in fields if field in MEASURES):
            summary[name] |= _mean(MEASURES[field].title, [row[field] for row in members])
    return summary


def _mean(title: str, values: list) -> dict[str, float | int | None]:
    """The mean of a measure over the samples the judge gave it for, its standard error, and how many it did not."""
    judged = [float(value) for value in values if value is not None]
    entry = {title: sum(judged) / len(judged) if judged else None}
    entry[f"{title} stderr"] = mean_stderr(judged) if len(judged) > 1 else None
    if len(judged) < len(values):
        entry[f"{title} unjudged"] = len(values) - len(judged)
    return entry


def write_summary(rows: list[dict], judge, out: Path, run: dict[str, str]) -> list[Path]:
    """`run`: the identity of the run the rows judge (`runs.run_identity`)."""
    summary = summarise(rows, judge.fields)
    titles = [MEASURES[field].title for field in judge.fields if field in MEASURES]
    (out / f"summary_{judge.name}.json").write_text(
        json.dumps({"judge": judge.name, "run": run, "summary": summary}, indent=1)
    )
    unjudged = [t for t in titles if any(f"{t} unjudged" in values for values in summary.values())]
    header = ["task / part", "samples", *(f"{t} (± stderr)" for t in titles), *(f"{t}: unjudged" for t in unjudged)]
    table_rows = [
        [
            name,
            str(values["samples"]),
            *(tables.estimate(values[t], values[f"{t} stderr"]) for t in titles),
            *(str(values.get(f"{t} unjudged", 0)) for t in unjudged),
        ]
        for name, values in summary.items()
    ]
    table = tables.markdown(header, table_rows, [False] + [True] * (len(header) - 1))
    (out / f"summary_{judge.name}.md").write_text(f"Judge: {judge.name}\n\n{table}")
    return [out / f"judged_{judge.name}.jsonl", out / f"summary_{judge.name}.json", out / f"summary_{judge.name}.md"]
