"""`moe-rbench judge`: judge every generation of the safety tasks in lm-eval's samples files, resumably.

Output (in `--out`, default `<samples dir>/judged`):
- `judged_<judge>.jsonl`: one line per sample, `{task, doc_id, risk_area, instruction, response, <judge fields>}`,
  appended and flushed batch by batch. A restarted run reads it first, drops a line cut short by the
  interruption, and judges only the samples it does not hold: none twice, none lost;
- `summary_<judge>.json` and `summary_<judge>.md`: per task, and per Do-Not-Answer risk area, the mean of each
  judge field (mean harmfulness, unsafe ratio, mean max moderation score, refusal rate).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

SAFETY_PREFIX = "moe_rbench_safety_"
SUMMARY_FIELDS = {"harmfulness": "mean harmfulness", "unsafe": "unsafe ratio", "moderation_max": "mean max moderation",
                  "refusal": "refusal rate"}  # fmt: skip


@dataclass(frozen=True)
class Sample:
    task: str
    doc_id: int
    instruction: str
    response: str
    risk_area: str | None


def samples_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.rglob(f"samples_{SAFETY_PREFIX}*.jsonl")) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"No samples of the safety tasks under {path}: run lm_eval with --tasks moe_rbench_safety "
                                "--log_samples --output_path DIR and pass that DIR (or one samples_*.jsonl file).")  # fmt: skip
    return files


def read_samples(files: list[Path]) -> list[Sample]:
    samples = []
    for file in files:
        task = file.name.removeprefix("samples_").rsplit("_", 1)[0]
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            record = json.loads(line)
            doc = record.get("doc") or {}
            if "instruction" not in doc or not record.get("filtered_resps"):
                raise ValueError(f"{file}, line {number}: not a sample of a moe_rbench safety task (no doc.instruction "
                                 "or filtered_resps)")  # fmt: skip
            response = record["filtered_resps"][0]
            response = response[0] if isinstance(response, list) else response
            samples.append(Sample(task, int(record["doc_id"]), doc["instruction"], response, doc.get("risk_area")))
    return samples


def _done(path: Path) -> dict[tuple[str, int], dict]:
    """Lines already judged; a last line without its newline (an interrupted write) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as file:
            file.truncate(len(complete))
    rows = [json.loads(line) for line in complete.decode("utf-8").splitlines()]
    return {(row["task"], row["doc_id"]): row for row in rows}


def judge_samples(samples_path: str | Path, judge, out_dir: str | Path | None = None, batch_size: int = 16,
                  progress: bool = True) -> list[Path]:  # fmt: skip
    files = samples_files(samples_path)
    out = Path(out_dir) if out_dir else (files[0].parent if Path(samples_path).is_file() else Path(samples_path)) / "judged"
    out.mkdir(parents=True, exist_ok=True)
    judged = out / f"judged_{judge.name}.jsonl"
    samples = read_samples(files)
    done = _done(judged)
    todo = [sample for sample in samples if (sample.task, sample.doc_id) not in done]
    with judged.open("a", encoding="utf-8") as file, tqdm(total=len(samples), initial=len(samples) - len(todo),
                                                         desc=f"judge {judge.name}", disable=not progress) as bar:  # fmt: skip
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for sample, scores in zip(batch, judge.score([(s.instruction, s.response) for s in batch]), strict=True):
                row = {"task": sample.task, "doc_id": sample.doc_id, "risk_area": sample.risk_area,
                       "instruction": sample.instruction, "response": sample.response, **scores}  # fmt: skip
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
                done[(sample.task, sample.doc_id)] = row
            file.flush()
            os.fsync(file.fileno())
            bar.update(len(batch))
    return write_summary(list(done.values()), judge, out)


def summarise(rows: list[dict], fields: tuple[str, ...]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["task"]].append(row)
        if row.get("risk_area"):
            groups[f"{row['task']} / {row['risk_area']}"].append(row)
    summary = {}
    for name, members in sorted(groups.items()):
        summary[name] = {"samples": len(members)}
        for field in fields:
            if field in SUMMARY_FIELDS:
                values = [float(row[field]) for row in members if row.get(field) is not None]
                summary[name][SUMMARY_FIELDS[field]] = sum(values) / len(values) if values else None
    return summary


def write_summary(rows: list[dict], judge, out: Path) -> list[Path]:
    summary = summarise(rows, judge.fields)
    columns = [SUMMARY_FIELDS[field] for field in judge.fields if field in SUMMARY_FIELDS]
    (out / f"summary_{judge.name}.json").write_text(json.dumps({"judge": judge.name, "summary": summary}, indent=1))
    lines = [f"| task (risk area) | samples | {' | '.join(columns)} |", "|---|---:|" + "---:|" * len(columns)]
    for name, values in summary.items():
        cells = ["" if values[c] is None else f"{values[c]:.4f}" for c in columns]
        lines.append(f"| {name} | {values['samples']} | {' | '.join(cells)} |")
    (out / f"summary_{judge.name}.md").write_text(f"Judge: {judge.name}\n\n" + "\n".join(lines) + "\n")
    return [out / f"judged_{judge.name}.jsonl", out / f"summary_{judge.name}.json", out / f"summary_{judge.name}.md"]
