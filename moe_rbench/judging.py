"""`moe-rbench judge`: judge every generation of the safety tasks in lm-eval's samples files, resumably.

The samples are judged run by run: lm-eval writes each run's samples as `samples_<task>_<stamp>.jsonl` in a folder
per model, and a directory given here may hold several runs (two models, or a rerun into the same output path).
Output per run (in `--out`, allowed for one run only; default `<run folder>/judged/<stamp>`):
- `judged_<judge>.jsonl`: one line per sample, `{task, doc_id, part, instruction, response, <judge fields>}` (`part`:
  the Do-Not-Answer risk area, XSTest's safe or unsafe),
  appended and flushed batch by batch. A restarted run reads it first, drops a line cut short by the
  interruption, and judges only the samples it does not hold: none twice, none lost;
- `summary_<judge>.json` and `summary_<judge>.md`: per task and per part (`task / part`; XSTest per part only: its
  safe and unsafe prompts ask opposite things), the mean of each judge measure (`MEASURES`: mean harmfulness, unsafe
  ratio, refusal rate, ...) with its standard error (`<measure> stderr`, as lm-eval computes it) and, where the judge
  gave no verdict on some samples (a WildGuard parse error, HarmBench's neither-yes-nor-no), their number
  (`<measure> unjudged`), left out of the mean. The JSON names the run (model folder and stamp), so that
  `moe-rbench report` credits it to that run only.
"""

from __future__ import annotations

import json
import os
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


def _done(path: Path) -> dict[tuple[str, int], dict]:
    """Lines already judged; a last line without its newline (an interrupted write) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as file:
            file.truncate(len(complete))
    rows = {}
    for number, row in json_lines(path):
        if not isinstance(row, dict) or not {"task", "doc_id", "part"} <= row.keys():
            raise JudgingError(
                f"{path}, line {number}: not a judged sample of this moe-rbench version (it needs task, doc_id and "
                "part); the file is damaged or older. Remove it to judge the run again."
            )
        rows[(row["task"], row["doc_id"])] = row
    return rows


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
        out = Path(out_dir) if out_dir is not None else run.folder / "judged" / run.stamp
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
            batch = todo[start : start + batch_size]
            for sample, scores in zip(batch, judge.score([(s.instruction, s.response) for s in batch]), strict=True):
                row = {
                    "task": sample.task,
                    "doc_id": sample.doc_id,
                    "part": sample.part,
                    "instruction": sample.instruction,
                    "response": sample.response,
                    **scores,
                }
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
                done[(sample.task, sample.doc_id)] = row
            file.flush()
            os.fsync(file.fileno())
            bar.update(len(batch))
    return write_summary(list(done.values()), judge, out, run.identity)


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
