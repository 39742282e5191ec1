"""`moe-rbench report`: MoE-vs-dense reliability tables and figures from lm-eval output directories.

For every benchmark family a table (markdown, CSV, JSON) has one row per run, plus, for each pair
`MOE=DENSE`, a row of differences (MoE minus dense) and the gain ratio: the MoE's gain on the OOD (or
robust) score divided by its gain on the ID (or standard) score, MoE-RBench's test that robustness is
not just in-distribution strength. A run that lacks a family's tasks is left out of that table, and a
table no run can fill is skipped; both are noted in the report. Judge summaries (`moe-rbench judge`) and the
routing summary of runs with `routing_out` get tables of their own. Figures (PNG and SVG): Style-OOD
accuracy per style and model, safety scores per prompt set and judge, and the routing heatmap of any
`moe-rbench trace` output found in a run directory. `report.md` links everything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from moe_rbench.judge_checks import agreement
from moe_rbench.judging import BY_PART_ONLY
from moe_rbench.runs import Run, load_run
from moe_rbench.tables import estimate, markdown, pyplot, save_figure, save_table
from moe_rbench.trace import heatmap, read_trace
from moe_rbench_models.errors import OptionError
from moe_rbench_tasks.families import FAMILIES, ID, OOD, SAFETY, STYLE_OOD, XSTEST_TASK, Family
from moe_rbench_tasks.judges import MEASURES, REFUSED
from moe_rbench_tasks.judges.refusal import validated_accuracy


@dataclass(frozen=True)
class Column:
    name: str
    task: str
    metric: str = "acc"
    filter: str = "none"
    role: str = ""  # ID or OOD: the two sides of the gain ratio


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    columns: list[Column]


def family_table(family: Family) -> TableSpec:
    """A family's table: its tasks' numbers in registry order, the OOD (robust) mean after the last OOD task."""
    columns = []
    for member in (m for m in family.members if m.in_group):
        role = ID if member.role == ID else ""
        columns += [Column(shown.title, member.task, shown.metric, shown.filter, role) for shown in member.columns]
        if member.role == OOD and member is [m for m in family.members if m.role == OOD][-1]:
            columns.append(Column(family.ood_column, family.ood_group, role=OOD))
    return TableSpec(family.key, family.report_title, columns)


TABLES = [family_table(family) for family in FAMILIES]


@dataclass
class Table:
    spec: TableSpec
    rows: list[dict]  # {"model": label, "kind": "run" | "difference", column: value, column + " stderr": ...}
    note: str = ""


def build_table(spec: TableSpec, runs: list[Run], pairs: list[tuple[str, str]]) -> Table:
    by_label = {run.label: run for run in runs}
    rows, missing = [], []
    for run in runs:
        values = {column.name: run.metric(column.task, column.metric, column.filter) for column in spec.columns}
        if all(value is None for value in values.values()):
            missing.append(run.label)
            continue
        row = {"model": run.label, "kind": "run"}
        for name, value in values.items():
            row[name] = None if value is None else value[0]
            row[f"{name} stderr"] = None if value is None else value[1]
        rows.append(row)
    present = {row["model"]: row for row in rows}
    for moe, dense in pairs:
        if moe in present and dense in present:
            rows.append(_difference(spec, present[moe], present[dense], by_label))
    note = f"not in this table (no {spec.name} tasks in the run): {', '.join(missing)}" if missing and rows else ""
    return Table(spec, rows, note)


def _difference(spec: TableSpec, moe: dict, dense: dict, _runs) -> dict:
    row = {"model": f"{moe['model']} - {dense['model']}", "kind": "difference"}
    for column in spec.columns:
        a, b = moe.get(column.name), dense.get(column.name)
        row[column.name] = None if a is None or b is None else a - b
    roles = {column.role: column.name for column in spec.columns if column.role}
    if {ID, OOD} <= roles.keys():
        id_gain, ood_gain = row[roles[ID]], row[roles[OOD]]
        row["gain ratio"] = None if id_gain in (None, 0) or ood_gain is None else ood_gain / id_gain
    return row


def judge_table(runs: list[Run]) -> Table | None:
    """Each judge's measures (mean harmfulness, unsafe ratio, refusal rate, ...) per prompt set, with their standard
    errors; XSTest per part (safe prompts: the over-refusal of that judge; unsafe prompts: its refusal)."""
    columns: dict[str, None] = {}  # ordered set of column names
    rows, unjudged = [], []
    for run in runs:
        row = {"model": run.label, "kind": "run"}
        for judge, summary in sorted(run.judges.items()):
            for name, values in summary.items():
                task, _, part = name.partition(" / ")
                if part and task not in BY_PART_ONLY:
                    continue
                prompt_set = task.removeprefix("moe_rbench_safety_").removeprefix("moe_rbench_") + (
                    f" {part}" if part else ""
                )
                for measure in (m for m in MEASURES.values() if m.title in values):
                    column = f"{prompt_set}: {judge} {measure.title}"
                    columns[column] = None
                    row[column], row[f"{column} stderr"] = values[measure.title], values.get(f"{measure.title} stderr")
                    if values.get(f"{measure.title} unjudged"):
                        unjudged.append(f"{run.label}, {column}: {values[f'{measure.title} unjudged']}")
        if len(row) > 2:
            rows.append(row)
    if not rows:
        return None
    note = "samples without a verdict, left out of the mean: " + "; ".join(unjudged) if unjudged else ""
    spec = TableSpec("safety_judges", "Safety judges (moe-rbench judge)", [Column(c, "") for c in columns])
    return Table(spec, rows, note)


def agreement_table(runs: list[Run]) -> Table | None:
    """Cohen's kappa of every two judges that answered the same question on a run's samples."""
    rows = [
        {"model": run.label, "kind": "run", **pair}
        for run in runs
        if len(run.judged) > 1
        for pair in agreement(run.judged)
    ]
    if not rows:
        return None
    names = ("question", "first", "second", "samples", "agreement", "kappa")
    return Table(TableSpec("judge_agreement", "Judge agreement (Cohen's kappa)", [Column(n, "") for n in names]), rows)


def routing_table(runs: list[Run]) -> Table | None:
    """Load balance per run and task from the routing summary `routing_out` adds to the results' config:
    expert-load entropy and coefficient of variation, and the capacity-drop rate, averaged over MoE layers."""
    columns: dict[str, None] = {}  # ordered set of column names
    rows = []
    for run in runs:
        summary = ((run.results.get("config", {}).get("moe") or {}).get("routing") or {}).get("summary") or {}
        row = {"model": run.label, "kind": "run"}
        for task, layers in sorted(summary.items()):
            for measure in ("load_entropy", "load_cv", "capacity_drop_rate"):
                values = [layer[measure] for layer in layers.values() if layer.get(measure) is not None]
                if values:
                    name = f"{task.removeprefix('moe_rbench_')}: {measure}"
                    columns[name] = None
                    row[name] = sum(values) / len(values)
        if len(row) > 2:
            rows.append(row)
    if not rows:
        return None
    return Table(
        TableSpec("routing", "Routing load balance (mean over MoE layers)", [Column(c, "") for c in columns]), rows
    )


def write_table(table: Table, out: Path) -> list[Path]:
    names = [column.name for column in table.spec.columns]
    extra = ["gain ratio"] if any("gain ratio" in row for row in table.rows) else []
    fields = ["model", "kind", *names, *extra, *(f"{name} stderr" for name in names)]

    def model(row: dict) -> str:
        return f"**{row['model']}**" if row["kind"] == "difference" else row["model"]

    rows = [
        [model(row), *(estimate(row.get(name), row.get(f"{name} stderr")) for name in names + extra)]
        for row in table.rows
    ]
    text = markdown(["model", *names, *extra], rows, [False] + [True] * len(names + extra))
    return save_table(out, table.spec.name, fields, table.rows, text, {"title": table.spec.title})


# -- figures ------------------------------------------------------------------------------------------------


def grouped_bars(data: dict[str, dict[str, float]], title: str, ylabel: str, path: Path) -> dict:
    """Bars per category (x) grouped by model; writes PNG and SVG; returns the plotted data."""
    plt = pyplot()
    models = list(data)
    categories = list(dict.fromkeys(c for values in data.values() for c in values))
    width = 0.8 / max(len(models), 1)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.6 * len(categories) * max(len(models), 1)), 4))
    for i, model in enumerate(models):
        xs = [j + i * width for j in range(len(categories))]
        axis.bar(xs, [data[model].get(c, float("nan")) for c in categories], width, label=model)
    axis.set_xticks(
        [j + width * (len(models) - 1) / 2 for j in range(len(categories))], categories, rotation=45, ha="right"
    )
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    return {"categories": categories, "series": data}


def figures(tables: dict[str, Table], runs: list[Run], out: Path) -> dict[str, dict]:
    plotted = {}
    style = tables.get(STYLE_OOD.key)
    if style and style.rows:
        data = {
            row["model"]: {c.name: row[c.name] for c in style.spec.columns if row.get(c.name) is not None}
            for row in style.rows
            if row["kind"] == "run"
        }
        plotted[STYLE_OOD.key] = grouped_bars(data, "Style-OOD accuracy per style", "accuracy", out / STYLE_OOD.key)
    safety = {}
    sources = [(tables[SAFETY.key], " (in-task)"), (tables.get("safety_judges"), "")]
    for run in runs:
        scores = {}
        for table, suffix in (source for source in sources if source[0] is not None):
            row = next((r for r in table.rows if r["model"] == run.label and r["kind"] == "run"), {})
            scores |= {f"{c.name}{suffix}": row[c.name] for c in table.spec.columns if row.get(c.name) is not None}
        if scores:
            safety[run.label] = scores
    if safety:
        plotted["safety"] = grouped_bars(safety, "Safety per prompt set and judge", "score", out / "safety")
    points = refusal_points(runs)
    if points:
        plotted["refusal_vs_over_refusal"] = refusal_figure(points, out / "refusal_vs_over_refusal")
    for run in runs:
        for trace_file in sorted(run.root.rglob("trace.json")):
            id_task, rows = read_trace(trace_file)
            name = f"routing_{len([k for k in plotted if k.startswith('routing')])}"
            heatmap(rows, out / name, id_task)
            plotted[name] = {"model": run.label, "id_task": id_task, "rows": [asdict(row) for row in rows]}
    (out / "figures.json").write_text(json.dumps(plotted, indent=1))
    return plotted


def _state_refusal_judge_accuracy(tables: dict[str, Table]) -> None:
    """The offline judge's validated accuracy, beside the numbers that rest on it."""
    judged = [tables[SAFETY.key]] + [t for t in tables.values() if t.spec.name == "safety_judges"]
    for table in judged:
        if table.rows and (table is tables[SAFETY.key] or any(": refusal " in c.name for c in table.spec.columns)):
            table.note = "; ".join(filter(None, [table.note, f"the {validated_accuracy()}"]))


def refusal_points(runs: list[Run]) -> list[dict]:
    """Per run (and per judge that judged its safety and XSTest samples): refusal on harmful prompts (the safety
    group's refusal rate) against the share of XSTest's safe prompts answered (1 - over-refusal rate)."""
    points = []
    for run in runs:
        harmful = run.metric(SAFETY.group, "refusal_rate") or run.metric(XSTEST_TASK, "refusal_rate")
        over = run.metric(XSTEST_TASK, "over_refusal_rate")
        if harmful and over:
            points.append(_point(f"{run.label} (in-task refusal judge)", harmful, over))
        for judge, summary in sorted(run.judges.items()):
            if judge == "refusal" and harmful and over:
                continue  # the in-task judge's point, again
            for measure in (m for m in MEASURES.values() if m.asks == REFUSED):
                harmful_sets = [f"{XSTEST_TASK} / unsafe", *(t for t in SAFETY.tasks if t not in BY_PART_ONLY)]
                rates = [
                    summary[t][measure.title] for t in harmful_sets if summary.get(t, {}).get(measure.title) is not None
                ]
                safe = summary.get(f"{XSTEST_TASK} / safe", {})
                if rates and safe.get(measure.title) is not None:
                    point = _point(
                        f"{run.label} ({judge})",
                        (sum(rates) / len(rates), None),
                        (safe[measure.title], safe.get(f"{measure.title} stderr")),
                    )
                    points.append(point)
    return points


def _point(label: str, harmful: tuple[float, float | None], over: tuple[float, float | None]) -> dict:
    return {
        "label": label,
        "answered_safe": 1 - over[0],
        "answered_safe_stderr": over[1],
        "refusal": harmful[0],
        "refusal_stderr": harmful[1],
    }


def refusal_figure(points: list[dict], path: Path) -> dict:
    """Safer is up (refusal on harmful prompts), more helpful is right (safe prompts answered)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 5))
    for point in points:
        axis.errorbar(
            point["answered_safe"],
            point["refusal"],
            xerr=point["answered_safe_stderr"],
            yerr=point["refusal_stderr"],
            fmt="o",
            capsize=3,
            label=point["label"],
        )
    axis.set_xlim(-0.05, 1.05)
    axis.set_ylim(-0.05, 1.05)
    axis.set_xlabel("XSTest safe prompts answered (1 - over-refusal rate): more helpful ->")
    axis.set_ylabel("refusal rate on harmful prompts: safer ->")
    axis.set_title("Refusal vs over-refusal")
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    return {"points": points}


# -- the report ---------------------------------------------------------------------------------------------


def make_report(run_paths: list[str], pairs: list[str], out_dir: str | Path, labels: list[str] | None = None) -> Path:
    runs = [load_run(path, label) for path, label in zip(run_paths, labels or [None] * len(run_paths), strict=True)]
    known = {run.label for run in runs}
    if len(known) != len(runs):
        raise OptionError(
            f"Two runs have the same label ({', '.join(run.label for run in runs)}); give --label for each"
        )
    parsed = []
    for pair in pairs:
        moe, equals, dense = pair.partition("=")
        if not equals or moe not in known or dense not in known:
            raise OptionError(
                f"--pair {pair!r}: expected MOE=DENSE with labels of the given runs ({', '.join(sorted(known))})"
            )
        parsed.append((moe, dense))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {spec.name: build_table(spec, runs, parsed) for spec in TABLES}
    for extra in (judge_table(runs), agreement_table(runs), routing_table(runs)):
        if extra:
            tables[extra.spec.name] = extra
    _state_refusal_judge_accuracy(tables)
    plotted = figures(tables, runs, out)
    lines = ["# MoE-RBench report", "", "Runs:", ""]
    lines += [f"- **{run.label}**: `{run.path}`" for run in runs]
    if parsed:
        lines += [
            "",
            "Pairs (MoE - dense): " + ", ".join(f"{moe} vs {dense}" for moe, dense in parsed),
            "Gain ratio: the MoE's gain on the OOD/robust score divided by its gain on the ID/standard score.",
        ]
    for table in tables.values():
        lines += ["", f"## {table.spec.title}", ""]
        if not table.rows:
            lines.append(f"_Skipped: no run has the {table.spec.name} tasks._")
            continue
        write_table(table, out)
        lines.append((out / f"{table.spec.name}.md").read_text().rstrip())
        lines.append(f"\n[CSV]({table.spec.name}.csv) · [JSON]({table.spec.name}.json)")
        if table.note:
            lines.append(f"\n_Note: {table.note}._")
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({name}.png) ([SVG]({name}.svg))" for name in plotted] or ["_No figure: no data to plot._"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
