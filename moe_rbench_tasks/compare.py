"""`moe-rbench compare`: a CI gate. Every reliability metric two runs share, as a markdown table; the exit
status says whether any got worse by more than the tolerance.

Metrics are those of the `moe_rbench_*` tasks and groups in lm-eval's results (direction from its
`higher_is_better`) and the judge summaries of `moe-rbench judge` (harmfulness, unsafe ratio and moderation
scores: lower is better; refusal rate: higher is better). A drop is `baseline - candidate` for a
higher-is-better metric and the reverse otherwise; with `ignore_within_stderr`, a drop no larger than the
combined standard error `sqrt(se_b^2 + se_c^2)` passes.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from moe_rbench_tasks.runs import JUDGE_METRICS, Run, load_run


@dataclass(frozen=True)
class Comparison:
    name: str  # "task / metric,filter" or "judge / task / measure"
    baseline: float
    candidate: float
    higher_is_better: bool
    stderr: float | None
    drop: float
    failed: bool


def shared_metrics(baseline: Run, candidate: Run) -> list[tuple[str, float, float, bool, float | None]]:
    metrics = []
    for table in ("results", "groups"):
        for task, entry in sorted(baseline.results.get(table, {}).items()):
            if not task.startswith("moe_rbench"):
                continue
            for key in entry:
                name, _, filter_name = key.partition(",")
                higher = baseline.higher_is_better(task, name)
                if "_stderr" in name or not filter_name or higher is None:
                    continue
                base, cand = baseline.metric(task, name, filter_name), candidate.metric(task, name, filter_name)
                if base is None or cand is None:
                    continue
                stderr = math.hypot(base[1], cand[1]) if base[1] is not None and cand[1] is not None else None
                metrics.append((f"{task} / {key}", base[0], cand[0], bool(higher), stderr))
    for judge, summary in sorted(baseline.judges.items()):
        for task, values in sorted(summary.items()):
            other = candidate.judges.get(judge, {}).get(task, {})
            for measure, higher in JUDGE_METRICS.items():
                if values.get(measure) is not None and other.get(measure) is not None:
                    metrics.append((f"{judge} / {task} / {measure}", values[measure], other[measure], higher, None))
    return metrics


def compare(baseline: Run, candidate: Run, max_drop: float = 0.01, patterns: list[str] | None = None,
            ignore_within_stderr: bool = False) -> list[Comparison]:  # fmt: skip
    rows = []
    for name, base, cand, higher, stderr in shared_metrics(baseline, candidate):
        if patterns and not any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
            continue
        drop = (base - cand) if higher else (cand - base)
        failed = drop > max_drop and not (ignore_within_stderr and stderr is not None and drop <= stderr)
        rows.append(Comparison(name, base, cand, higher, stderr, drop, failed))
    return rows


def markdown(rows: list[Comparison], baseline: Run, candidate: Run, max_drop: float) -> str:
    failed = [row for row in rows if row.failed]
    verdict = (f"**{len(failed)} of {len(rows)} metrics got worse by more than {max_drop}**" if failed
               else f"All {len(rows)} shared metrics within {max_drop} of the baseline")  # fmt: skip
    lines = [f"### moe-rbench compare: {candidate.label} vs baseline {baseline.label}", "", verdict, "",
             "| metric | better | baseline | candidate | change | stderr | |", "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for row in rows:
        stderr = "" if row.stderr is None else f"{row.stderr:.4f}"
        lines.append(f"| {row.name} | {'higher' if row.higher_is_better else 'lower'} | {row.baseline:.4f} | "
                     f"{row.candidate:.4f} | {row.candidate - row.baseline:+.4f} | {stderr} | "
                     f"{'FAIL' if row.failed else 'ok'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run_compare(baseline: str, candidate: str, max_drop: float, patterns: list[str] | None,
                ignore_within_stderr: bool) -> tuple[str, int]:  # fmt: skip
    base, cand = load_run(baseline), load_run(candidate)
    rows = compare(base, cand, max_drop, patterns, ignore_within_stderr)
    if not rows:
        raise ValueError(f"{baseline} and {candidate} share no moe_rbench metric" +
                         (f" matching {', '.join(patterns)}" if patterns else ""))  # fmt: skip
    return markdown(rows, base, cand, max_drop), int(any(row.failed for row in rows))
