"""`moe_vllm` against `moe_hf`: the same lm-eval requests (SST-2 scoring and malicious-prompt generation, 8 documents
each) on tiny Mixtral, Qwen3-MoE and OLMoE checkpoints, plain and under top_k, force_experts and disable_experts;
the routing records must be the same request for request, and the tools must read them into the same tables.

moe_hf runs in the main environment (`make setup`'s .venv: vLLM pins a transformers older than moe_hf supports),
moe_vllm here; both through lm-eval's Python API (tests_vllm/record_runs.py), and Mixtral's plain run of moe_vllm
through the `lm_eval` command. moe_vllm's requests go to the engine all at once (batch_size=auto) with chunked
prefill forced, so continuous batching of prompts of different lengths and prompts split over steps are exercised.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moe_rbench_models.errors import OptionError
from moe_rbench_models.vllm.tiny import build_vllm_tiny_model

ROOT = Path(__file__).resolve().parents[1]
HF_PYTHON = Path(os.environ.get("MOE_RBENCH_HF_PYTHON", ROOT / ".venv" / "bin" / "python"))
ARCHITECTURES = ("mixtral", "qwen3_moe", "olmoe")
TASKS = ["moe_rbench_sst2", "moe_rbench_safety_malicious"]
LIMIT = 8
CONFIGURATIONS = {
    "plain": {},
    "top_k": {"top_k": 1},
    "force": {"force_experts": "0:5;2:1,6"},
    "disable": {"disable_experts": "1:0,1,2;3:4"},
}
COMMON = {"dtype": "float32"}
ENGINE = {"max_model_len": 512, "max_num_batched_tokens": 64, "max_num_seqs": 8, "seed": 0}
CLI_RUN = ("mixtral", "plain")  # moe_vllm's run through the `lm_eval` command
PREEMPTED = ("mixtral", "preempted")  # moe_vllm's run with a KV cache too small for its requests (moe_hf's: CLI_RUN's)
PREEMPTING = {"max_model_len": 256, "block_size": 32, "num_gpu_blocks_override": 10}
TENSOR_PARALLEL = ("mixtral", "force, tensor parallel")  # two worker processes (moe_hf's: mixtral force)
# vLLM's CPU workers bind their threads to NUMA nodes unless told which cores: one core each, the first two allowed
_CPUS = sorted(os.sched_getaffinity(0))
TWO_CPU_WORKERS = {"VLLM_CPU_OMP_THREADS_BIND": f"{_CPUS[0]}|{_CPUS[1 % len(_CPUS)]}"}
SHORT_GENERATIONS = "max_gen_toks=24"


def _environment() -> dict[str, str]:
    data = os.environ.get("MOE_RBENCH_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return {
        **os.environ,
        "MOE_RBENCH_DATA_DIR": data,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engines in the script's process: a second one starts in seconds
    }


def _record_runs(python: Path, model: str, runs: list[dict], plan_path: Path, batch_size) -> list[str]:
    """The command that evaluates `runs` with `model` (tests_vllm/record_runs.py), its plan written to plan_path."""
    plan = {"model": model, "tasks": TASKS, "limit": LIMIT, "batch_size": batch_size, "runs": runs}
    plan_path.write_text(json.dumps(plan))
    return [str(python), str(ROOT / "tests_vllm" / "record_runs.py"), str(plan_path)]


def _run_together(commands: dict[str, tuple[list[str], dict[str, str]]], timeout: int = 1200) -> dict[str, str]:
    """Run the commands side by side (moe_hf's runs, moe_vllm's and the `lm_eval` command); each must succeed.
    Their standard outputs."""
    started = {
        name: subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (command, env) in commands.items()
    }
    outputs = {}
    for name, process in started.items():
        outputs[name], stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"{name} failed:\n{outputs[name][-3000:]}\n{stderr[-6000:]}"
    return outputs


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {architecture: build_vllm_tiny_model(architecture, root / architecture) for architecture in ARCHITECTURES}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, models):
    """Every (architecture, configuration)'s records directory for moe_hf and for moe_vllm."""
    if not HF_PYTHON.is_file():
        pytest.fail(f"moe_hf's environment {HF_PYTHON} is missing: run `make setup` (make test-vllm does)")
    root = tmp_path_factory.mktemp("moe-vllm")
    runs: dict[str, list[dict]] = {"moe_hf": [], "moe_vllm": []}
    directories = {}
    for architecture, model_dir in models.items():
        for name, options in CONFIGURATIONS.items():
            directories[architecture, name] = {model: root / f"{model}-{architecture}-{name}" for model in runs}
            for model in runs:
                if model == "moe_vllm" and (architecture, name) == CLI_RUN:
                    continue
                engine = ENGINE if model == "moe_vllm" else {"device": "cpu"}
                model_args = {"pretrained": str(model_dir), **COMMON, **engine, **options}
                # short generations but where the `lm_eval` command runs as a user would
                gen_kwargs = None if (architecture, name) == CLI_RUN else SHORT_GENERATIONS
                out = str(directories[architecture, name][model])
                runs[model].append({"out": out, "model_args": model_args, "gen_kwargs": gen_kwargs})
    directories[PREEMPTED] = {**directories[CLI_RUN], "moe_vllm": root / "moe_vllm-mixtral-preempted"}
    preempting = {"pretrained": str(models["mixtral"]), **COMMON, **ENGINE, **PREEMPTING}
    runs["moe_vllm"].append(
        {"out": str(directories[PREEMPTED]["moe_vllm"]), "model_args": preempting, "count_preemptions": True}
    )
    directories[TENSOR_PARALLEL] = {
        **directories["mixtral", "force"],
        "moe_vllm": root / "moe_vllm-mixtral-force-tp2",
    }
    tensor_parallel = {
        "pretrained": str(models["mixtral"]),
        **COMMON,
        **ENGINE,
        **CONFIGURATIONS["force"],
        "tensor_parallel_size": 2,
    }
    runs["moe_vllm"].append(
        {
            "out": str(directories[TENSOR_PARALLEL]["moe_vllm"]),
            "model_args": tensor_parallel,
            "gen_kwargs": SHORT_GENERATIONS,
            "env": TWO_CPU_WORKERS,
        }
    )
    outputs = _run_together(
        {
            "moe_hf": (_record_runs(HF_PYTHON, "moe_hf", runs["moe_hf"], root / "moe_hf.json", 1), _environment()),
            "moe_vllm": (
                _record_runs(Path(sys.executable), "moe_vllm", runs["moe_vllm"], root / "moe_vllm.json", "auto"),
                _environment(),
            ),
            "lm_eval --model moe_vllm": _lm_eval_command(
                models[CLI_RUN[0]], directories[CLI_RUN]["moe_vllm"], root / "cli-output"
            ),
        }
    )
    return Recorded(directories, int(re.search(r"preemptions: (\d+)", outputs["moe_vllm"]).group(1)))


class Recorded(dict):
    """The records directories by (architecture, configuration), and how many preemptions the preempted run had."""

    def __init__(self, directories: dict, preemptions: int) -> None:
        super().__init__(directories)
        self.preemptions = preemptions


def _lm_eval_command(model_dir: Path, routing_out: Path, output_path: Path) -> tuple[list[str], dict[str, str]]:
    """The issue's command: `lm_eval --model moe_vllm --model_args pretrained=...,routing_out=DIR --tasks ...`."""
    model_args = ",".join(
        f"{name}={value}" for name, value in {"pretrained": model_dir, "routing_out": routing_out, **COMMON}.items()
    )
    command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "moe_vllm", "--model_args", model_args]
    command += ["--tasks", ",".join(TASKS), "--limit", str(LIMIT), "--output_path", str(output_path)]
    return command, {**_environment(), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}


def _by_request(directory: Path) -> dict:
    from moe_rbench_models.routing import load_records

    return {(r.task, r.doc_id, r.request_index, r.request_type): r for r in load_records(directory)}


def _float16_steps(a: np.ndarray, b: np.ndarray) -> float:
    """How many float16 steps apart the stored weights are at most (records keep weights as float16)."""
    step = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
    return float((np.abs(a.astype(np.float32) - b.astype(np.float32)) / step).max(initial=0))


@pytest.mark.parametrize("name", CONFIGURATIONS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_records_equal_moe_hf(recorded, architecture, name):
    assert_same_records(recorded[architecture, name])


def test_records_equal_moe_hf_when_requests_are_preempted(recorded):
    """A KV cache of 10 blocks of 32 tokens for 8 requests of up to 256: vLLM preempts running generations and
    recomputes them from their first token; the records are still moe_hf's."""
    assert recorded.preemptions >= 1
    assert_same_records(recorded[PREEMPTED])


def test_records_equal_moe_hf_with_tensor_parallel_workers(recorded):
    """Two tensor-parallel workers (each routing every token, with the request's intervention): rank 0's capture is
    moe_hf's."""
    assert_same_records(recorded[TENSOR_PARALLEL])


def assert_same_records(directories: dict[str, Path]) -> None:
    hf, vllm = _by_request(directories["moe_hf"]), _by_request(directories["moe_vllm"])
    assert set(vllm) == set(hf) and len(hf) == LIMIT * 2 + LIMIT  # two choices per SST-2 document, one generation
    generated = 0
    for key, expected in hf.items():
        found = vllm[key]
        for field in ("context_tokens", "continuation_tokens", "continuation_inputs"):
            np.testing.assert_array_equal(getattr(found, field), getattr(expected, field), err_msg=f"{key} {field}")
        assert found.layers.keys() == expected.layers.keys()
        for layer, routing in expected.layers.items():
            for span in ("context", "continuation"):
                ids, weights = f"{span}_ids", f"{span}_weights"
                np.testing.assert_array_equal(getattr(found.layers[layer], ids), getattr(routing, ids), err_msg=key)
                # float32 weights agree to ~1e-6 (test_worker.py); stored as float16, they may round one step apart
                assert _float16_steps(getattr(found.layers[layer], weights), getattr(routing, weights)) <= 1, key
        generated += key[3] == "generate_until" and len(expected.continuation_tokens)
    assert generated > LIMIT  # generations were recorded token by token
    manifests = {
        model: json.loads((directory / "routing.json").read_text()) for model, directory in directories.items()
    }
    for manifest in manifests.values():  # each layer's module path is its engine's own (vLLM's or transformers')
        manifest["layers"] = [{**layer, "name": None} for layer in manifest["layers"]]
    for entry in ("model", "interventions", "layers", "summary"):  # the header, and expert counts of the whole run
        assert manifests["moe_vllm"][entry] == manifests["moe_hf"][entry], entry


def test_interventions_changed_routing(recorded):
    """The configurations are not all the plain routing under other names."""
    plain = _by_request(recorded["mixtral", "plain"]["moe_vllm"])
    for name in ("top_k", "force", "disable"):
        changed = _by_request(recorded["mixtral", name]["moe_vllm"])
        key = next(iter(plain))
        assert any(
            not np.array_equal(plain[key].layers[layer].context_ids, changed[key].layers[layer].context_ids)
            for layer in plain[key].layers
        ), name


@pytest.mark.parametrize("command", ["trace", "attribute"])
def test_tools_read_moe_vllm_records_into_the_same_tables(recorded, tmp_path, command):
    arguments = {
        "trace": ["--id", TASKS[0], "--ood", TASKS[1]],
        "attribute": ["--a", TASKS[0], "--b", TASKS[1]],
    }[command]
    tables = {}
    for model in ("moe_hf", "moe_vllm"):
        out = tmp_path / model
        done = subprocess.run(
            [sys.executable, "-m", "moe_rbench.cli", command, "--routing", str(recorded["mixtral", "plain"][model])]
            + arguments
            + ["--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        tables[model] = {
            path.name: path.read_bytes() for path in out.iterdir() if path.suffix in (".md", ".csv", ".json")
        }
    assert len(tables["moe_hf"]) == 3 and tables["moe_vllm"] == tables["moe_hf"]


def test_steer_evaluates_on_moe_vllm(recorded, models, tmp_path):
    """`moe-rbench steer` on moe_vllm's records, its before and after evaluations run by moe_vllm."""
    out = tmp_path / "steer"
    sets = ["--a", TASKS[0], "--b", TASKS[1], "--selection", "steermoe", "--force", "1", "--disable", "1"]
    lm_eval_args = ["--model", "moe_vllm", "--model_args", f"pretrained={models['mixtral']},dtype=float32"]
    lm_eval_args += ["--tasks", TASKS[0], "--limit", str(LIMIT)]
    command = [sys.executable, "-m", "moe_rbench.cli", "steer", "--routing", str(recorded[CLI_RUN]["moe_vllm"])]
    done = subprocess.run(
        [*command, *sets, "--out", str(out), "--", *lm_eval_args],
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (results,) = (out / "after").rglob("results_*.json")
    steered = json.loads(results.read_text())["config"]["moe"]
    assert steered["engine"] == "vllm"
    per_layer = steered["interventions"]["per_layer"]
    assert sum(len(layer["forced"]) for layer in per_layer.values()) == 1
    assert sum(len(layer["disabled"]) for layer in per_layer.values()) == 1
    assert json.loads((out / "steer.json").read_text())["rows"]


def test_the_generation_benchmark_runs():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "vllm" / "generation.py"), "--smoke", "--hf_python", str(HF_PYTHON)],
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "capture's cost over plain eager vLLM" in done.stdout


REFUSED = {
    "compile": ({"routing_out": "DIR", "enforce_eager": "false"}, "enforce_eager=True"),
    "prefix caching": ({"top_k": 1, "enable_prefix_caching": True}, "enable_prefix_caching=False"),
    "pipeline parallel": ({"force_experts": "0:1", "pipeline_parallel_size": 2}, "pipeline_parallel_size=1"),
    "data parallel": ({"routing_out": "DIR", "data_parallel_size": 2}, "data_parallel_size=1"),
    "logits": ({"routing_out": "DIR", "routing_logits": True}, "routing_logits"),
    "steermoe disable": ({"disable_experts": "0:1", "disable_mode": "steermoe"}, "disable_mode=reroute"),
    "dola": ({"dola_layers": "high"}, "DoLa"),
    "extension": ({"top_k": 1, "worker_extension_cls": "x.Y"}, "worker_extension_cls"),
}


@pytest.mark.parametrize("setting", REFUSED)
def test_unsupported_settings_are_refused_before_the_engine_starts(setting, tmp_path):
    from moe_rbench_models.moe_vllm import MoEVLLM

    model_args, named = REFUSED[setting]
    model_args = {name: str(tmp_path) if value == "DIR" else value for name, value in model_args.items()}
    with pytest.raises(OptionError, match=re.escape(named)):
        MoEVLLM(pretrained=str(tmp_path / "no-model"), **model_args)
