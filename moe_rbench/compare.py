"""`moe-rbench compare`: a strict CI gate. Every reliability metric of the baseline run, checked in the candidate.

Metrics are those of the `moe_rbench_*` tasks and groups in lm-eval's results (direction from its
`higher_is_better`; XSTest's over-refusal rate: lower is better) and the judge summaries of `moe-rbench judge`
(direction from the judges' `MEASURES`: harmfulness, unsafe and harmful rates lower, refusal rates higher; the
partial refusal rate is shown by the report and not gated). A drop is `baseline - candidate` for a
higher-is-better metric and the reverse otherwise.

A metric fails when
- the candidate lacks it (a lost task or metric; `allow_missing` lists it instead);
- either value is not a finite number (NaN, infinite, null);
- it dropped by more than `max_drop` and the drop is real: with `paired` and samples logged by both runs,
  a paired test on the same documents rejects "no change" at `alpha` (exact McNemar for 0/1 per-document
  scores of one task, a stratified paired bootstrap otherwise, e.g. for group means); without samples, the
  unpaired rule (any drop beyond `max_drop`; with `ignore_within_stderr`, beyond the combined standard error).
The standard error shown for a change is the paired one (from the per-document differences) where a paired test
ran, else the two runs' standard errors combined.

Runs that are not comparable stop the gate (`Incomparable`, exit 3): a task evaluated on a different number
of documents (`--limit`), with a different `num_fewshot`, task version, or dataset/prompt hash.
Exit status of the command (`EXIT_*`): 0 pass, 1 a metric got worse, was lost or is invalid, 2 a usage error (an
option, or a run that cannot be found or read), 3 the runs are not comparable.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from moe_rbench import tables
from moe_rbench.runs import Run, RunError, load_run
from moe_rbench_models.errors import MoERBenchError, OptionError
from moe_rbench_tasks.judges import MEASURES

BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 1234
CHUNK = 200  # bootstrap resamples drawn at once (memory: CHUNK x documents)


MISSING = object()  # the candidate has no such metric
EXIT_PASS, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPARABLE = 0, 1, 2, 3  # the command's exit status
SHOWN_DIFFERENCES = 20  # differences of incomparable runs listed, one per line; the others counted
SAME = {  # a field in which incomparable runs differ -> what to evaluate both runs with
    "n-samples": "the same --limit",
    "n-shot": "the same --num_fewshot",
    "versions": "the same moe-rbench release (task versions)",
    "task_hashes": "the same data and prompts (data directory, task options)",
    "doc_id": "the same documents (--limit, data)",
}


class Incomparable(MoERBenchError, ValueError):
    """The two runs did not evaluate the same thing; comparing their numbers would mislead.

    `problems`: one line per difference ("task: field (meaning) value in the baseline, value in the candidate");
    `summary`: one line counting them and saying what to do; `details()`: the lines to show under it (capped)."""

    def __init__(self, problems: list[str], fields: list[str]) -> None:
        self.problems = problems
        tasks = {problem.split(": ", 1)[0] for problem in problems}
        kinds = ", ".join(f"{field} in {fields.count(field)}" for field in dict.fromkeys(fields))
        self.summary = (
            f"the runs are not comparable: {len(problems)} difference(s) in {len(tasks)} task(s)"
            + (f" ({kinds})" if kinds else "")
            + f"; evaluate both runs with {', '.join(SAME[field] for field in dict.fromkeys(fields))}, or compare "
            "only the tasks evaluated alike (--metrics)"
        )
        super().__init__(f"{self.summary}; first: {problems[0]}" if problems else self.summary)

    def details(self, shown: int = SHOWN_DIFFERENCES) -> list[str]:
        lines = self.problems[:shown]
        if len(self.problems) > shown:
            lines.append(f"... and {len(self.problems) - shown} more of the same kinds")
        return lines


@dataclass(frozen=True)
class Comparison:
    name: str  # "task / metric,filter" or "judge / task / measure"
    baseline: float | None
    candidate: float | None
    higher_is_better: bool
    stderr: float | None  # of the change: paired (document differences) where a paired test ran, else combined
    status: str  # ok, FAIL, missing, missing (allowed), invalid
    p_value: float | None = None
    test: str = "unpaired"  # McNemar, paired bootstrap, unpaired

    @property
    def failed(self) -> bool:
        return self.status in ("FAIL", "missing", "invalid")

    @property
    def change(self) -> float | None:
        return None if self.status in ("missing", "missing (allowed)", "invalid") else self.candidate - self.baseline

    @property
    def drop(self) -> float | None:
        """How much worse the candidate is (negative: better); None where nothing was compared."""
        change = self.change
        return None if change is None else -change if self.higher_is_better else change


@dataclass(frozen=True)
class Metric:
    name: str
    task: str | None  # None for judge measures
    key: str  # "metric,filter" or the judge measure
    higher_is_better: bool
    baseline: object
    candidate: object  # MISSING where the candidate lacks the metric
    stderr: float | None = None


def _task_metrics(baseline: Run, task: str, entry: dict, other: dict) -> list[Metric]:
    metrics = []
    for key, value in entry.items():
        name, _, filter_name = key.partition(",")
        higher = baseline.higher_is_better(task, name)
        if not filter_name or name.endswith("_stderr") or higher is None:
            continue
        stderrs = [run_entry.get(f"{name}_stderr,{filter_name}") for run_entry in (entry, other)]
        stderr = math.hypot(*stderrs) if all(_finite(s) for s in stderrs) else None
        metrics.append(Metric(f"{task} / {key}", task, key, bool(higher), value, other.get(key, MISSING), stderr))
    return metrics


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry(run: Run, task: str) -> dict | None:
    return run.results.get("results", {}).get(task) or run.results.get("groups", {}).get(task)


def baseline_metrics(baseline: Run, candidate: Run, tasks: str = "moe_rbench*") -> list[Metric]:
    """Every metric the baseline reports for the tasks matching `tasks`, and the judges', with the candidate's value
    (MISSING where it lacks it)."""
    metrics = []
    entries = {
        **baseline.results.get("groups", {}),
        **baseline.results.get("results", {}),
    }  # lm-eval lists groups in both
    for task, entry in sorted(entries.items()):
        if fnmatch.fnmatch(task, tasks):
            metrics += _task_metrics(baseline, task, entry, _entry(candidate, task) or {})
    for judge, summary in sorted(baseline.judges.items()):
        for task, values in sorted(summary.items()):
            other = candidate.judges.get(judge, {}).get(task, {})
            for measure in (m for m in MEASURES.values() if m.higher_is_better is not None and m.title in values):
                stderrs = [row.get(f"{measure.title} stderr") for row in (values, other)]
                stderr = math.hypot(*stderrs) if all(_finite(s) for s in stderrs) else None
                metrics.append(
                    Metric(
                        f"{judge} / {task} / {measure.title}",
                        None,
                        measure.title,
                        measure.higher_is_better,
                        values[measure.title],
                        other.get(measure.title, MISSING),
                        stderr,
                    )
                )
    return metrics


# -- comparability ------------------------------------------------------------------------------------------


def check_comparable(baseline: Run, candidate: Run, tasks: set[str]) -> None:
    """Raise Incomparable, naming the field, where a task present in both runs was evaluated differently."""
    checks = [
        ("n-samples", "number of evaluated documents (--limit)", lambda v: (v or {}).get("effective")),
        ("n-shot", "num_fewshot", lambda v: v),
        ("versions", "task version", lambda v: v),
        ("task_hashes", "dataset/prompt hash", lambda v: v),
    ]
    problems, fields = [], []
    for task in sorted(tasks):
        if _entry(candidate, task) is None:
            continue
        for field, meaning, read in checks:
            values = [read(run.results.get(field, {}).get(task)) for run in (baseline, candidate)]
            if field == "task_hashes" and None in values:  # recorded only when samples were logged
                continue
            if values[0] != values[1]:
                if field == "task_hashes":  # 64 hex digits: the first 12 tell them apart
                    values = [f"{value[:12]}..." if isinstance(value, str) else value for value in values]
                problems.append(
                    f"{task}: {field} ({meaning}) {values[0]!r} in the baseline, {values[1]!r} in the candidate"
                )
                fields.append(field)
    if problems:
        raise Incomparable(problems, fields)


# -- paired tests -------------------------------------------------------------------------------------------


def logged_samples(run: Run) -> dict[str, list[dict]] | None:
    """The samples lm-eval logged beside the run's results file (same timestamp), per task; None if none."""
    stamp = run.path.stem.removeprefix("results_")
    files = sorted(run.path.parent.glob(f"samples_*_{stamp}.jsonl"))
    if not files:
        return None
    samples = {}
    for path in files:
        task = path.name.removeprefix("samples_").removesuffix(f"_{stamp}.jsonl")
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise RunError(f"{path}, line {number}: unreadable sample ({error.msg})") from None
        samples[task] = rows
    return samples


def _leaf_tasks(run: Run, task: str) -> list[str]:
    subtasks = run.results.get("group_subtasks", {})
    if task not in subtasks:
        return [task]
    return [leaf for sub in subtasks[task] for leaf in _leaf_tasks(run, sub)]


def _per_document(samples: dict[str, list[dict]], tasks: list[str], key: str) -> dict[str, dict[int, float]]:
    """Per task, the per-document values of `metric,filter` (tasks without that metric are left out)."""
    metric, _, filter_name = key.partition(",")
    strata = {}
    for task in tasks:
        values = {
            row["doc_id"]: row[metric]
            for row in samples.get(task, [])
            if row.get("filter", "none") == filter_name and metric in row
        }
        if values:
            strata[task] = values
    return strata


def _aggregate(means: np.ndarray, sizes: np.ndarray, pooled: bool) -> np.ndarray:
    """Group value from per-task means (last axis): the mean of tasks, or of documents when `pooled`."""
    return (means * sizes).sum(-1) / sizes.sum() if pooled else means.mean(-1)


def _mcnemar(baseline: np.ndarray, candidate: np.ndarray) -> float:
    """Exact two-sided McNemar test: a binomial test on the discordant pairs."""
    worse = int(((baseline == 1) & (candidate == 0)).sum())
    better = int(((baseline == 0) & (candidate == 1)).sum())
    if worse + better == 0:
        return 1.0
    return float(binomtest(worse, worse + better, 0.5).pvalue)


def _paired_bootstrap(differences: list[np.ndarray], pooled: bool) -> float:
    """Two-sided p-value of "no change" for the aggregate of per-task mean differences, resampling documents
    within each task."""
    sizes = np.array([len(d) for d in differences], dtype=float)
    observed = float(_aggregate(np.array([d.mean() for d in differences]), sizes, pooled))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    extreme = 0
    for start in range(0, BOOTSTRAP_RESAMPLES, CHUNK):
        draws = min(CHUNK, BOOTSTRAP_RESAMPLES - start)
        means = np.stack([d[rng.integers(0, len(d), size=(draws, len(d)))].mean(1) for d in differences], axis=-1)
        extreme += int((np.abs(_aggregate(means, sizes, pooled) - observed) >= abs(observed) - 1e-12).sum())
    return (extreme + 1) / (BOOTSTRAP_RESAMPLES + 1)


@dataclass(frozen=True)
class PairedTest:
    p_value: float
    test: str  # McNemar or paired bootstrap
    stderr: float | None  # of the change, from the per-document differences (None: a task of one document)


def paired_test(metric: Metric, baseline: Run, candidate: Run, samples: tuple[dict, dict]) -> PairedTest | None:
    """The paired test of a task or group metric on the documents both runs scored, with the paired standard error
    of the change; None when the samples cannot reproduce the reported values (the unpaired rule is used then)."""
    tasks = _leaf_tasks(baseline, metric.task)
    strata = [_per_document(run_samples, tasks, metric.key) for run_samples in samples]
    if not strata[0] or strata[0].keys() != strata[1].keys():
        return None
    base, cand = [], []
    for task in strata[0]:
        if strata[0][task].keys() != strata[1][task].keys():
            raise Incomparable([f"{task}: the two runs' samples hold different documents (doc_id)"], ["doc_id"])
        ids = sorted(strata[0][task])
        base.append(np.array([strata[0][task][i] for i in ids], dtype=float))
        cand.append(np.array([strata[1][task][i] for i in ids], dtype=float))
    pooled = _reproduces(base, metric.baseline) and _reproduces(cand, metric.candidate)
    unweighted = _reproduces(base, metric.baseline, pooled=False) and _reproduces(cand, metric.candidate, pooled=False)
    if not (pooled or unweighted):
        return None
    differences = [c - b for b, c in zip(base, cand, strict=True)]
    stderr = _paired_stderr(differences, pooled=not unweighted)
    binary = all(set(np.unique(values)) <= {0.0, 1.0} for values in base + cand)
    if len(base) == 1 and binary:
        return PairedTest(_mcnemar(base[0], cand[0]), "McNemar", stderr)
    return PairedTest(_paired_bootstrap(differences, pooled=not unweighted), "paired bootstrap", stderr)


def _paired_stderr(differences: list[np.ndarray], pooled: bool) -> float | None:
    """Standard error of the aggregate change: per task the sample variance of the document differences over n,
    combined with the aggregate's weights (documents when pooled, else tasks alike)."""
    sizes = np.array([len(d) for d in differences], dtype=float)
    if sizes.min() < 2:
        return None  # a task of one document has no sample variance
    weights = sizes / sizes.sum() if pooled else np.full(len(sizes), 1 / len(sizes))
    variances = np.array([d.var(ddof=1) / len(d) for d in differences])
    return float(np.sqrt((weights**2 * variances).sum()))


def _reproduces(values: list[np.ndarray], reported: float, pooled: bool = True) -> bool:
    sizes = np.array([len(v) for v in values], dtype=float)
    aggregate = float(_aggregate(np.array([v.mean() for v in values]), sizes, pooled))
    return math.isclose(aggregate, reported, rel_tol=1e-6, abs_tol=1e-9)


# -- the gate -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateOptions:
    """The `moe-rbench compare` options (see the module docstring)."""

    max_drop: float = 0.01
    patterns: tuple[str, ...] = ()  # only metrics whose names match one of these
    ignore_within_stderr: bool = False
    allow_missing: bool = False
    paired: bool = False
    alpha: float = 0.05
    tasks: str = "moe_rbench*"  # the tasks and groups whose metrics count (steer: all)

    def __post_init__(self) -> None:
        if not self.max_drop >= 0:  # NaN too
            raise OptionError(
                f"--max_drop {self.max_drop}: the tolerated drop must be 0 or more (e.g. --max_drop 0.01); a "
                "negative tolerance fails a run compared with itself"
            )
        if not 0 < self.alpha < 1:
            raise OptionError(
                f"--alpha {self.alpha}: the significance level of --paired must be between 0 and 1 (e.g. --alpha 0.05)"
            )


@dataclass(frozen=True)
class Gate:
    rows: list[Comparison]
    paired: bool  # paired tests were asked for
    samples: bool  # both runs logged samples
    options: GateOptions = GateOptions()

    @property
    def failed(self) -> bool:
        return any(row.failed for row in self.rows)


def compare(baseline: Run, candidate: Run, options: GateOptions = GateOptions()) -> Gate:
    max_drop, patterns, alpha = options.max_drop, options.patterns, options.alpha
    allow_missing, ignore_within_stderr, paired = options.allow_missing, options.ignore_within_stderr, options.paired
    metrics = [
        m
        for m in baseline_metrics(baseline, candidate, options.tasks)
        if not patterns or any(fnmatch.fnmatch(m.name, pattern) for pattern in patterns)
    ]
    check_comparable(baseline, candidate, {m.task for m in metrics if m.task})
    samples = (logged_samples(baseline), logged_samples(candidate)) if paired else (None, None)
    have_samples = all(s is not None for s in samples)
    rows = []
    for metric in metrics:
        row = dict(name=metric.name, higher_is_better=metric.higher_is_better, stderr=metric.stderr)
        if metric.candidate is MISSING:
            rows.append(
                Comparison(
                    **row,
                    baseline=_number(metric.baseline),
                    candidate=None,
                    status="missing (allowed)" if allow_missing else "missing",
                )
            )
            continue
        if not (_finite(metric.baseline) and _finite(metric.candidate)):
            rows.append(
                Comparison(
                    **row, baseline=_number(metric.baseline), candidate=_number(metric.candidate), status="invalid"
                )
            )
            continue
        drop = (metric.baseline - metric.candidate) * (1 if metric.higher_is_better else -1)
        test = paired_test(metric, baseline, candidate, samples) if have_samples and metric.task else None
        if test is not None:
            p_value, name = test.p_value, test.test
            row["stderr"] = test.stderr
            failed = drop > max_drop and p_value < alpha
        else:
            p_value, name = None, "unpaired"
            within = ignore_within_stderr and metric.stderr is not None and drop <= metric.stderr
            failed = drop > max_drop and not within
        rows.append(
            Comparison(
                **row,
                baseline=float(metric.baseline),
                candidate=float(metric.candidate),
                status="FAIL" if failed else "ok",
                p_value=p_value,
                test=name,
            )
        )
    return Gate(rows, paired, have_samples, options)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def markdown(gate: Gate, baseline: Run, candidate: Run) -> str:
    title = f"### moe-rbench compare: {candidate.label} vs baseline {baseline.label}"
    return f"{title}\n\n{headline(gate)}\n\n{rule(gate)}\n\n" + comparison_table(gate.rows)


def headline(gate: Gate) -> str:
    """What the gate decided, in one line: the verdict, how the metrics were compared and every exception to
    "within the tolerance" (failed, passed only by the test or the standard error, missing, invalid)."""
    options, rows = gate.options, gate.rows
    beyond = [row for row in rows if row.drop is not None and row.drop > options.max_drop]
    counts = {
        f"worse by more than {options.max_drop}": sum(row.status == "FAIL" for row in beyond),
        f"dropped by more than {options.max_drop} but not significantly (p >= {options.alpha})": sum(
            row.status == "ok" and row.test != "unpaired" for row in beyond
        ),
        f"dropped by more than {options.max_drop} but within the combined standard error (--ignore_within_stderr)": sum(
            row.status == "ok" and row.test == "unpaired" for row in beyond
        ),
        "missing from the candidate": sum(row.status == "missing" for row in rows),
        "missing, allowed (--allow_missing)": sum(row.status == "missing (allowed)" for row in rows),
        "invalid (NaN, infinite or null)": sum(row.status == "invalid" for row in rows),
    }
    exceptions = "; ".join(f"{count} {what}" for what, count in counts.items() if count)
    compared = [row for row in rows if row.drop is not None]
    how = f"{len(compared)} compared {_how_compared(gate, compared)}"
    failed = sum(row.failed for row in rows)
    if failed:
        return f"FAIL: **{failed} of {len(rows)} metrics failed**; {how}: {exceptions}"
    if not exceptions:
        return f"PASS: All {len(rows)} baseline metrics within {options.max_drop} of the baseline ({how})"
    return f"PASS: {len(rows)} baseline metrics, {how}: {exceptions}"


def _how_compared(gate: Gate, compared: list[Comparison]) -> str:
    unpaired = "by the unpaired rule" + (" with --ignore_within_stderr" if gate.options.ignore_within_stderr else "")
    paired = sum(row.test != "unpaired" for row in compared)
    if not paired:
        return unpaired
    test = f"by the paired test at alpha {gate.options.alpha}"
    return test if paired == len(compared) else f"{paired} {test}, {len(compared) - paired} {unpaired}"


def rule(gate: Gate) -> str:
    """The rules applied, as the gate applied them."""
    options = gate.options
    unpaired = f"a drop beyond {options.max_drop} fails" + (
        " unless it is within the combined standard error (--ignore_within_stderr; a metric without standard "
        "errors gets the plain rule)"
        if options.ignore_within_stderr
        else ""
    )
    if not gate.paired:
        text = f"Unpaired rule: {unpaired}."
    elif gate.samples:
        text = (
            f"Paired tests on the same documents (--paired): a drop beyond {options.max_drop} fails when p < "
            f"{options.alpha}; metrics marked `unpaired` could not be reproduced from the samples and use the unpaired "
            f"rule: {unpaired}."
        )
    else:
        text = (
            "--paired asked for, but not both runs logged samples (--log_samples): the unpaired rule was used: "
            f"{unpaired}."
        )
    missing = "is listed, not failed (--allow_missing)" if options.allow_missing else "fails"
    return f"{text} A metric missing from the candidate {missing}; a value that is not a finite number fails."


def comparison_table(
    rows: list[Comparison], names: tuple[str, str] = ("baseline", "candidate"), status: bool = True
) -> str:
    """The markdown table of compared metrics (`names`: the two runs' column titles; `status`: the verdict column)."""
    header = ["metric", "better", *names, "change", "stderr", "p", "test", *([""] if status else [])]
    cells = [
        [
            row.name,
            "higher" if row.higher_is_better else "lower",
            tables.number(row.baseline) or "null",
            tables.number(row.candidate) or "null",
            tables.number(row.change, signed=True),
            tables.number(row.stderr),
            "" if row.p_value is None else f"{row.p_value:.4g}",
            row.test,
            *([row.status] if status else []),
        ]
        for row in rows
    ]
    return tables.markdown(header, cells, [False, False, *[True] * 5, False, *([False] if status else [])])


def run_compare(baseline: str | Path, candidate: str | Path, options: GateOptions = GateOptions()) -> tuple[str, int]:
    """The markdown table and the exit status (EXIT_PASS or EXIT_FAILED); raises Incomparable (EXIT_INCOMPARABLE),
    RunError or OptionError (EXIT_USAGE)."""
    base, cand = load_run(baseline), load_run(candidate)
    gate = compare(base, cand, options)
    if not gate.rows:
        matching = f" matching {', '.join(options.patterns)}" if options.patterns else ""
        raise OptionError(f"{baseline} has no moe_rbench metric{matching}")
    return markdown(gate, base, cand), EXIT_FAILED if gate.failed else EXIT_PASS
