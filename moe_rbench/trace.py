"""Router tracing: how routing shifts between an in-distribution task and out-of-distribution ones.

For each MoE layer and each OOD task, from the records of one `routing_out` directory:

- `distribution_l1`: L1 distance between the normalised expert-usage distributions of the ID task and
  the OOD task (all their tokens), in [0, 2] - MoE-RBench's router-tracing measure;
- `mean_pair_l1`: mean over aligned documents (an SST-2 sentence and its styled version, an SNLI pair and
  the same pair in SNLI-hard) of the L1 distance between the two documents' expert-usage distributions.
  Documents align by their `id` field (the record's `doc_key`), and only within a task family that declares
  aligned ids (`Family.aligned_ids`: DecodingTrust ids across the Style-OOD tasks, the pair text across SNLI test and
  SNLI-hard), or between tasks of no moe_rbench family (the user's own). Other tasks get no pairs (`pairs` 0, a
  note) rather than pairs of unrelated documents; lm-eval's `doc_id` (a row number) is never used to pair.

Every stored position counts once per document (a multiple-choice context shared by its choices once);
tokens dropped for capacity (Switch) are not counted, as no expert processed them.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from moe_rbench.tables import markdown, number, pyplot, save_figure, save_table
from moe_rbench_models.errors import MoERBenchError, OptionError
from moe_rbench_models.routing import VERSION, expert_counts, load_manifest, load_records, recorded_tasks
from moe_rbench_tasks.families import aligned, family_of


@dataclass(frozen=True)
class TraceRow:
    ood_task: str
    layer: str
    distribution_l1: float
    mean_pair_l1: float | None
    pairs: int


@dataclass(frozen=True)
class Usage:
    total: dict[str, np.ndarray]  # layer -> expert counts over the task
    per_doc: dict[str, dict[str, np.ndarray]]  # doc_key -> layer -> expert counts (documents with a key)


def expert_usage(directory: str | Path, tasks: set[str]) -> dict[str, Usage]:
    """Expert counts per task and layer, and per document."""
    manifest = load_manifest(directory)
    experts = {layer["key"]: layer["num_experts"] for layer in manifest["layers"]}
    usage = {task: Usage({key: np.zeros(n, dtype=np.int64) for key, n in experts.items()}, {}) for task in tasks}
    keys_align = manifest.get("version", 1) >= VERSION  # version 1 gave BOSS documents row numbers as ids
    seen: set[tuple] = set()
    for record in load_records(directory):
        if record.task not in usage:
            continue
        task_usage = usage[record.task]
        doc = {key: np.zeros(n, dtype=np.int64) for key, n in experts.items()}
        if keys_align and record.doc_key is not None:
            doc = task_usage.per_doc.setdefault(record.doc_key, doc)
        for part, spans in (("context", record.context_spans), ("continuation", record.continuation_spans)):
            if not spans or (record.task, record.doc_id, spans) in seen:
                continue
            seen.add((record.task, record.doc_id, spans))
            for key, routing in record.layers.items():
                counts = expert_counts(
                    getattr(routing, f"{part}_ids"), getattr(routing, f"{part}_dropped"), experts[key]
                )
                doc[key] += counts
                task_usage.total[key] += counts
    return usage


def _l1(a: np.ndarray, b: np.ndarray) -> float:
    if not a.sum() or not b.sum():
        return float("nan")
    return float(np.abs(a / a.sum() - b / b.sum()).sum())


def trace_routing(directory: str | Path, id_task: str, ood_tasks: list[str]) -> list[TraceRow]:
    """Rows for every (OOD task, layer). `ood_tasks` may hold shell patterns (`moe_rbench_style_*`)."""
    available = recorded_tasks(directory)
    if id_task not in available:
        raise OptionError(
            f"No records of ID task {id_task!r} in {directory}; recorded tasks: {', '.join(sorted(available))}"
        )
    expanded = sorted({task for pattern in ood_tasks for task in fnmatch.filter(available, pattern)} - {id_task})
    unmatched = [pattern for pattern in ood_tasks if not fnmatch.filter(available, pattern)]
    if unmatched or not expanded:
        raise OptionError(
            f"No records of OOD task(s) {', '.join(unmatched or ood_tasks)} in {directory}; "
            f"recorded tasks: {', '.join(sorted(available))}"
        )
    usage = expert_usage(directory, {id_task, *expanded})
    reference = usage[id_task]
    rows = []
    for task in expanded:
        pairable = aligned(id_task, task) or family_of(id_task) is family_of(task) is None
        for layer, counts in usage[task].total.items():
            pairs = [
                _l1(reference.per_doc[doc][layer], docs[layer])
                for doc, docs in usage[task].per_doc.items()
                if pairable and doc in reference.per_doc
            ]
            pairs = [value for value in pairs if not np.isnan(value)]
            rows.append(
                TraceRow(
                    task,
                    layer,
                    round(_l1(reference.total[layer], counts), 6),
                    round(float(np.mean(pairs)), 6) if pairs else None,
                    len(pairs),
                )
            )
    return rows


def pairing_notes(rows: list[TraceRow], id_task: str) -> list[str]:
    """A note for every OOD task none of whose documents aligns with one of the ID task."""
    unpaired = list(dict.fromkeys(row.ood_task for row in rows if row.pairs == 0))
    return [
        f"{task}: no document aligns with one of {id_task} (their ids differ, or their family does not align "
        "documents across tasks), so only the distribution L1 is given"
        for task in unpaired
    ]


def write_trace(rows: list[TraceRow], out_dir: str | Path, id_task: str) -> list[Path]:
    """`trace.md`, `trace.csv`, `trace.json` and the heatmap `trace.png` (layers by OOD task)."""
    out = Path(out_dir)
    notes = pairing_notes(rows, id_task)
    records = [asdict(row) for row in rows]
    table = markdown(
        ["OOD task", "layer", "distribution L1", "mean pair L1", "pairs"],
        [[r.ood_task, r.layer, number(r.distribution_l1), number(r.mean_pair_l1), str(r.pairs)] for r in rows],
        [False, False, True, True, True],
    )
    text = f"Routing shift from `{id_task}` (L1 distance of expert-usage distributions, 0-2)\n\n{table}"
    text += "".join(f"\nNote: {note}.\n" for note in notes)
    paths = save_table(
        out, "trace", list(TraceRow.__dataclass_fields__), records, text, {"id_task": id_task, "notes": notes}
    )
    return paths + heatmap(rows, out / "trace", id_task, (".png",))


class TraceFileError(MoERBenchError, ValueError):
    """A trace.json that `moe-rbench trace` did not write as it is; the message names the file and the fix."""


def read_trace(path: Path) -> tuple[str, list[TraceRow]]:
    """The ID task and rows of a `trace.json` that `write_trace` wrote; an error naming the file and what differs."""
    fix = "write it again with `moe-rbench trace`, or remove it from the run directory"
    try:
        trace = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TraceFileError(f"{path}: unreadable ({error}); {fix}") from None
    if (
        not isinstance(trace, dict)
        or not isinstance(trace.get("id_task"), str)
        or not isinstance(trace.get("rows"), list)
    ):
        raise TraceFileError(f"{path}: not a trace of `moe-rbench trace` (no 'id_task' and 'rows'); {fix}")
    names = list(TraceRow.__dataclass_fields__)
    for index, row in enumerate(trace["rows"]):
        if not isinstance(row, dict) or set(row) != set(names):
            keys = sorted(set(row) - set(names)) if isinstance(row, dict) else []
            missing = sorted(set(names) - set(row)) if isinstance(row, dict) else names
            problem = "; ".join(
                filter(None, [keys and f"the key(s) {', '.join(keys)}", missing and f"no {', '.join(missing)}"])
            )
            raise TraceFileError(
                f"{path}: row {index} has {problem or 'no fields'} (a trace row has {', '.join(names)}); {fix}"
            )
    return trace["id_task"], [TraceRow(**row) for row in trace["rows"]]


def heatmap(rows: list[TraceRow], path: Path, id_task: str, suffixes: tuple[str, ...] = (".png", ".svg")) -> list[Path]:
    """The routing-shift heatmap (layers by OOD task; distribution and aligned-document panels) at `path`."""
    plt = pyplot()
    tasks = list(dict.fromkeys(row.ood_task for row in rows))
    layers = list(dict.fromkeys(row.layer for row in rows))
    panels = [("distribution_l1", "expert-usage distribution"), ("mean_pair_l1", "aligned documents (mean)")]
    size = (max(6.0, 2.0 + 0.6 * len(tasks)), 2 * (2.2 + 0.3 * len(layers)))
    figure, axes = plt.subplots(2, 1, figsize=size, squeeze=False)
    for axis, (name, title) in zip(axes[:, 0], panels, strict=True):
        grid = np.full((len(layers), len(tasks)), np.nan)
        for row in rows:
            value = getattr(row, name)
            grid[layers.index(row.layer), tasks.index(row.ood_task)] = np.nan if value is None else value
        image = axis.imshow(grid, aspect="auto", cmap="viridis")
        axis.set_xticks(
            range(len(tasks)), [task.removeprefix("moe_rbench_") for task in tasks], rotation=60, ha="right"
        )
        axis.set_yticks(range(len(layers)), layers)
        axis.set_title(f"L1 vs {id_task.removeprefix('moe_rbench_')}: {title}", fontsize=9)
        figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return save_figure(figure, path, suffixes)
