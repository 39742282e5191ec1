"""What the tests share besides fixtures: paths, the command runners, in-process lm-eval runs and a stand-in
moderation server. Test files import these (`from helpers import run`); conftest.py holds only fixtures and hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from moe_rbench_models.tiny import ARCHITECTURES, SEQ2SEQ
from moe_rbench_tasks.families import STYLE_OOD

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "data"
BIN = Path(sys.executable).parent
STYLE_OOD_TASKS = STYLE_OOD.tasks  # moe_rbench_sst2 first, then the ten styles
# The architectures come from moe_rbench_models.tiny.ARCHITECTURES alone, so that one added there is tested.
DENSE = ("llama", "t5")  # the dense ones tiny.py builds (no MoE layer): baselines, not MoE architectures
MOE = [name for name in ARCHITECTURES if name not in DENSE]
CAUSAL_MOE = [name for name in MOE if name not in SEQ2SEQ]  # all but Switch Transformers


def run(command: list[str], *, env: dict | None = None, check: bool = True, timeout: int = 300, cwd=None):
    """Run a command (environment = this one's plus `env`); on failure show its output."""
    result = subprocess.run(
        command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{command} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
            f"--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def lm_eval_cli(model_args: str, tasks: str, *options: str, data_dir: Path = FIXTURE_DATA, check: bool = True):
    """The stock `lm_eval --model moe_hf` command line, on the CPU and the fixture data (or `data_dir`)."""
    metadata = json.dumps({"data_dir": str(data_dir)})
    command = [str(BIN / "lm_eval"), "--model", "moe_hf", "--model_args", model_args, "--metadata", metadata]
    return run([*command, "--tasks", tasks, "--device", "cpu", *options], check=check)


def lm_eval_outputs(output_path: Path) -> tuple[dict, dict[str, list[dict]]]:
    """The results JSON and the samples per task that one `lm_eval --output_path` run wrote."""
    (results_file,) = output_path.rglob("results_*.json")
    samples = {}
    for samples_file in output_path.rglob("samples_*.jsonl"):
        task = samples_file.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in samples_file.read_text().splitlines()]
    return json.loads(results_file.read_text()), samples


def evaluate_to(output_path: Path, model, tasks: list[str], data_dir: Path = FIXTURE_DATA, **kwargs) -> dict:
    """An in-process lm-eval run (Python API) whose results and samples files are written by lm-eval's own
    tracker, exactly as `lm_eval --output_path DIR --log_samples` writes them; returns the results."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    import moe_rbench_tasks

    tracker = EvaluationTracker(output_path=str(output_path))
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(data_dir)})
    results = lm_eval.simple_evaluate(
        model=model, tasks=tasks, task_manager=manager, log_samples=True, evaluation_tracker=tracker, **kwargs
    )
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    return results


class ModerationServer(BaseHTTPRequestHandler):
    """The moderation endpoint's wire format: 429 on the first call, then results; 401 for a bad key; 500 for the
    key `server-error`."""

    calls: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ModerationServer.calls.append(body)
        if self.headers.get("Authorization") == "Bearer server-error":
            return self._send(500, {"error": {"message": "The server had an error", "type": "server_error"}}, {})
        if self.headers.get("Authorization") != "Bearer test-key":
            return self._send(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                {},
            )
        if len(ModerationServer.calls) == 1:
            return self._send(
                429, {"error": {"message": "Rate limit reached", "type": "requests"}}, {"retry-after-ms": "10"}
            )
        results = [
            {
                "flagged": "bomb" in text,
                "categories": {"violence": "bomb" in text, "hate": False},
                "category_scores": {"violence": 0.9 if "bomb" in text else 0.01, "hate": 0.02},
                "category_applied_input_types": {"violence": ["text"], "hate": ["text"]},
            }
            for text in body["input"]
        ]
        return self._send(200, {"id": "modr-1", "model": body["model"], "results": results}, {})

    def _send(self, status, payload, headers):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass
