"""lm-eval output directories as runs: their results JSON, model label, metrics and judge summaries.

Shared by `moe-rbench report` and `moe-rbench compare`. A run is one `results_*.json` that
`lm_eval --output_path DIR` wrote (the newest, when DIR holds several), with the judge summaries that
`moe-rbench judge` wrote next to its samples (`judged/summary_<judge>.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# judge field -> (summary column, higher is better)
JUDGE_METRICS = {"mean harmfulness": False, "unsafe ratio": False, "mean max moderation": False, "refusal rate": True}


MODEL_TYPES = {"hf", "moe_hf", "huggingface", "hf-auto", "vllm"}  # lm-eval model names, not checkpoints


class RunError(ValueError):
    """A run directory or file cannot be read."""


@dataclass
class Run:
    path: Path  # the results file
    label: str
    results: dict
    judges: dict[str, dict] = field(default_factory=dict)  # judge -> task -> summary row
    root: Path | None = None  # the directory given for the run: judge summaries and trace outputs are under it

    def metric(self, task: str, metric: str, filter_name: str = "none") -> tuple[float, float | None] | None:
        """(value, standard error or None) of a task's or group's metric, or None when the run lacks it."""
        for table in ("results", "groups"):
            entry = self.results.get(table, {}).get(task)
            value = (entry or {}).get(f"{metric},{filter_name}")
            if isinstance(value, (int, float)):  # lm-eval writes "N/A" where it has no value
                stderr = entry.get(f"{metric}_stderr,{filter_name}")
                return float(value), (float(stderr) if isinstance(stderr, (int, float)) else None)
        return None

    def higher_is_better(self, task: str, metric: str) -> bool | None:
        return self.results.get("higher_is_better", {}).get(task, {}).get(metric)

    def tasks(self) -> set[str]:
        return set(self.results.get("results", {})) | set(self.results.get("groups", {}))


def model_label(results: dict) -> str:
    """The model named in lm-eval's results (`pretrained=` of the model arguments), marked with a decoding
    method when one is set."""
    config = results.get("config", {})
    args = config.get("model_args") or {}
    if isinstance(args, str):
        args = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    # the CLI records `--model moe_hf` and the checkpoint in model_args; the Python API records the model object's
    # checkpoint as `model`
    names = [args.get("pretrained"), config.get("model"), results.get("model_name")]
    label = next((str(n) for n in names if n and str(n) not in MODEL_TYPES), "model").rstrip("/")
    if label.startswith((".", "/", "~")):  # a local checkpoint: its folder name
        label = Path(label).name
    if args.get("dola_layers") is not None:
        label += " +DoLa"
    if args.get("scmoe_beta") is not None:
        label += " +SCMoE"
    return label


def load_run(path: str | Path, label: str | None = None) -> Run:
    path = Path(path)
    if path.is_file():
        results_file = path
    else:
        candidates = sorted(path.rglob("results_*.json"), key=lambda p: p.name) if path.is_dir() else []
        if not candidates:
            raise RunError(f"{path}: no lm-eval results (results_*.json) found; pass an lm_eval --output_path directory")
        results_file = candidates[-1]
    try:
        results = json.loads(results_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"{results_file}: unreadable lm-eval results ({error})") from None
    if not isinstance(results, dict) or "results" not in results:
        raise RunError(f"{results_file}: not an lm-eval results file (no 'results' entry)")
    judges = {}
    root = path if path.is_dir() else path.parent
    for summary_file in sorted(root.rglob("summary_*.json")):
        try:
            summary = json.loads(summary_file.read_text())
            judges[summary["judge"]] = summary["summary"]
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise RunError(f"{summary_file}: unreadable judge summary ({error})") from None
    return Run(results_file, label or model_label(results), results, judges, root)
