"""Router tracing: how routing shifts between an in-distribution task and out-of-distribution ones.

For each MoE layer and each OOD task, from the records of one `routing_out` directory:

- `distribution_l1`: L1 distance between the normalised expert-usage distributions of the ID task and
  the OOD task (all their tokens), in [0, 2] - MoE-RBench's router-tracing measure;
- `mean_pair_l1`: mean over aligned documents (an SST-2 sentence and its styled version, an SNLI pair and
  the same pair in SNLI-hard) of the L1 distance between the two documents' expert-usage distributions.
  Documents align by their `id` field (the record's `doc_key`), which a task family sets only where its
  documents correspond across tasks: DecodingTrust ids across the Style-OOD tasks, the pair text across
  SNLI test and SNLI-hard. Elsewhere ids are unique (ANLI uids, BOSS `<set>/<split>/<row>`), so unrelated tasks get no
  pairs (`pairs` 0, a note) rather than pairs of unrelated documents; lm-eval's `doc_id` (a row number) is
  never used to pair.

Every stored position counts once per document (a multiple-choice context shared by its choices once);
tokens dropped for capacity (Switch) are not counted, as no expert processed them.
"""

from __future__ import annotations

import csv
import fnmatch
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing.records import VERSION, load_manifest, load_records


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
                ids = getattr(routing, f"{part}_ids")
                dropped = getattr(routing, f"{part}_dropped")
                if dropped is not None:
                    ids = ids[~dropped]
                counts = np.bincount(ids[ids >= 0].astype(np.int64), minlength=experts[key])
                doc[key] += counts
                task_usage.total[key] += counts
    return usage


def _l1(a: np.ndarray, b: np.ndarray) -> float:
    if not a.sum() or not b.sum():
        return float("nan")
    return float(np.abs(a / a.sum() - b / b.sum()).sum())


def trace_routing(directory: str | Path, id_task: str, ood_tasks: list[str]) -> list[TraceRow]:
    """Rows for every (OOD task, layer). `ood_tasks` may hold shell patterns (`moe_rbench_style_*`)."""
    available = {task for task in _recorded_tasks(directory)}
    if id_task not in available:
        raise OptionError(f"No records of ID task {id_task!r} in {directory}; recorded tasks: {', '.join(sorted(available))}")
    expanded = sorted({task for pattern in ood_tasks for task in fnmatch.filter(available, pattern)} - {id_task})
    unmatched = [pattern for pattern in ood_tasks if not fnmatch.filter(available, pattern)]
    if unmatched or not expanded:
        raise OptionError(f"No records of OOD task(s) {', '.join(unmatched or ood_tasks)} in {directory}; "
                         f"recorded tasks: {', '.join(sorted(available))}")  # fmt: skip
    usage = expert_usage(directory, {id_task, *expanded})
    reference = usage[id_task]
    rows = []
    for task in expanded:
        for layer, counts in usage[task].total.items():
            pairs = [_l1(reference.per_doc[doc][layer], docs[layer])
                     for doc, docs in usage[task].per_doc.items() if doc in reference.per_doc]  # fmt: skip
            pairs = [value for value in pairs if not np.isnan(value)]
            rows.append(TraceRow(task, layer, round(_l1(reference.total[layer], counts), 6),
                                 round(float(np.mean(pairs)), 6) if pairs else None, len(pairs)))  # fmt: skip
    return rows


def pairing_notes(rows: list[TraceRow], id_task: str) -> list[str]:
    """A note for every OOD task none of whose documents aligns with one of the ID task."""
    unpaired = list(dict.fromkeys(row.ood_task for row in rows if row.pairs == 0))
    return [f"{task}: no document aligns with one of {id_task} (their ids differ, or their family does not align "
            "documents across tasks), so only the distribution L1 is given" for task in unpaired]


def _recorded_tasks(directory: str | Path) -> set[str]:
    return {task for task in load_manifest(directory)["summary"] if task != "None"}


def write_trace(rows: list[TraceRow], out_dir: str | Path, id_task: str) -> list[Path]:
    """`trace.md`, `trace.csv`, `trace.json` and the heatmap `trace.png` (layers by OOD task)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(TraceRow.__dataclass_fields__)
    with (out / "trace.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
    notes = pairing_notes(rows, id_task)
    (out / "trace.json").write_text(json.dumps({"id_task": id_task, "rows": [asdict(row) for row in rows],
                                                "notes": notes}, indent=1))  # fmt: skip
    lines = [f"Routing shift from `{id_task}` (L1 distance of expert-usage distributions, 0-2)", "",
             "| OOD task | layer | distribution L1 | mean pair L1 | pairs |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        pair = "" if row.mean_pair_l1 is None else f"{row.mean_pair_l1:.4f}"
        lines.append(f"| {row.ood_task} | {row.layer} | {row.distribution_l1:.4f} | {pair} | {row.pairs} |")
    lines += [""] + [f"Note: {note}." for note in notes] if notes else []
    (out / "trace.md").write_text("\n".join(lines) + "\n")
    heatmap(rows, out / "trace.png", id_task)
    return [out / name for name in ("trace.md", "trace.csv", "trace.json", "trace.png")]


def heatmap(rows: list[TraceRow], path: Path, id_task: str) -> None:
    """The routing-shift heatmap (layers by OOD task; distribution and aligned-document panels) at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row.ood_task for row in rows))
    layers = list(dict.fromkeys(row.layer for row in rows))
    panels = [("distribution_l1", "expert-usage distribution"), ("mean_pair_l1", "aligned documents (mean)")]
    size = (max(6.0, 2.0 + 0.6 * len(tasks)), 2 * (2.2 + 0.3 * len(layers)))
    figure, axes = plt.subplots(2, 1, figsize=size, squeeze=False)
    for axis, (name, title) in zip(axes[:, 0], panels):
        grid = np.full((len(layers), len(tasks)), np.nan)
        for row in rows:
            value = getattr(row, name)
            grid[layers.index(row.layer), tasks.index(row.ood_task)] = np.nan if value is None else value
        image = axis.imshow(grid, aspect="auto", cmap="viridis")
        axis.set_xticks(range(len(tasks)), [task.removeprefix("moe_rbench_") for task in tasks], rotation=60, ha="right")
        axis.set_yticks(range(len(layers)), layers)
        axis.set_title(f"L1 vs {id_task.removeprefix('moe_rbench_')}: {title}", fontsize=9)
        figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
