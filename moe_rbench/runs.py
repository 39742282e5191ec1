"""lm-eval output directories as runs: their results JSON, model label, metrics and judge summaries.

Shared by `moe-rbench report`, `compare` and `judge`. lm-eval writes a run as `results_<stamp>.json` and
`samples_<task>_<stamp>.jsonl` in a folder per model under `--output_path`; the stamp (the time the run
started) ties them together. A run here is one results file; a directory holding several is refused, naming
them. Its judge summaries are the `summary_<judge>.json` files under the directory given for the run that
`moe-rbench judge` wrote for this run's samples (they record the run's folder and stamp).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from moe_rbench_models.errors import MoERBenchError

STAMP = r"\d{4}-\d{2}-\d{2}T[0-9.\-]+"
RESULTS_FILE = re.compile(rf"results_(?P<stamp>{STAMP})\.json")
SAMPLES_FILE = re.compile(rf"samples_(?P<task>.+)_(?P<stamp>{STAMP})\.jsonl")


MODEL_TYPES = {"hf", "moe_hf", "huggingface", "hf-auto", "vllm"}  # lm-eval model names, not checkpoints


class RunError(MoERBenchError, ValueError):
    """A run directory or file cannot be read."""


@dataclass
class Run:
    path: Path  # the results file
    label: str
    results: dict
    judges: dict[str, dict] = field(default_factory=dict)  # judge -> task -> summary row
    judged: dict[str, Path] = field(default_factory=dict)  # judge -> its judged_<judge>.jsonl (beside the summary)
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
    method when one is set and with the fine-tuning recipe of a `moe-rbench finetune` checkpoint."""
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
    recipe = (config.get("moe") or {}).get("recipe")  # a checkpoint of `moe-rbench finetune`
    if isinstance(recipe, dict) and recipe.get("label"):
        label += f" [{recipe['label']}]"
    return label


def run_identity(folder: Path, stamp: str) -> dict[str, str]:
    """How judge outputs name the run they belong to: lm-eval's model folder and the run's stamp."""
    return {"folder": folder.name, "stamp": stamp}


def load_run(path: str | Path, label: str | None = None) -> Run:
    path = Path(path)
    if path.is_file():
        results_file = path
    else:
        candidates = sorted(path.rglob("results_*.json")) if path.is_dir() else []
        if not candidates:
            raise RunError(
                f"{path}: no lm-eval results (results_*.json) found; pass an lm_eval --output_path directory"
            )
        if len(candidates) > 1:
            raise RunError(
                f"{path} holds {len(candidates)} runs ({', '.join(str(c.relative_to(path)) for c in candidates)}); "
                "pass the results file of the one you mean"
            )
        (results_file,) = candidates
    try:
        results = json.loads(results_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"{results_file}: unreadable lm-eval results ({error})") from None
    if not isinstance(results, dict) or "results" not in results:
        raise RunError(f"{results_file}: not an lm-eval results file (no 'results' entry)")
    root = path if path.is_dir() else path.parent
    judges, judged = _judge_summaries(root, results_file)
    return Run(results_file, label or model_label(results), results, judges, judged, root)


def _judge_summaries(root: Path, results_file: Path) -> tuple[dict[str, dict], dict[str, Path]]:
    """The judge summaries under `root` that `moe-rbench judge` wrote for this run's samples, and their judged
    files."""
    match = RESULTS_FILE.fullmatch(results_file.name)
    identity = run_identity(results_file.parent, match["stamp"]) if match else None
    judges, judged = {}, {}
    for summary_file in sorted(root.rglob("summary_*.json")):
        try:
            summary = json.loads(summary_file.read_text())
            judge, run, rows = summary["judge"], summary.get("run"), summary["summary"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise RunError(f"{summary_file}: unreadable judge summary ({error})") from None
        if identity is not None and run == identity:
            judges[judge] = rows
            judged[judge] = summary_file.with_name(f"judged_{judge}.jsonl")
    return judges, judged
