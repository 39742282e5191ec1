"""Shared by the overhead benchmarks: one workload measured in a fresh process, configurations interleaved.

A run is a fresh interpreter (`python benchmarks/measure.py SPEC_JSON CONTROL ACK`) that loads the model
of its spec, builds its workload, warms up on a few requests and then measures only the workload: wall
time, CPU instructions and cycles (`perf stat`, counting switched on and off around the workload through
a control FIFO; absent where perf counters are not available) and peak memory during the workload
(resident set with the kernel's high-water mark reset just before it, or peak allocated CUDA memory).

Why instructions: on the shared 2-core development machine the same workload's wall time drifts by
15-40% across minutes, which buries a few percent; instruction counts repeat within a fraction of a
percent and measure the work a feature adds.

SPEC: {"model": "hf" | "moe_hf", "kwargs": {...model arguments...}, "workload": "loglikelihood" |
"generate_until", "device": ..., "threads": N, "patch": optional "module:function" called with the model,
"smoke": optional, true for a smoke run}.

`--smoke` (every benchmark has it; tests/test_benchmarks.py runs it): a tiny model, one round, a few requests of each
workload from the fixture data, the configurations run in this process; it checks that the benchmark still runs,
in seconds, and measures nothing worth reading.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE_HELP = "check that the benchmark runs: a tiny model, one round, a few requests (seconds; measures nothing)"
STYLE_SETS = ("augment", "shake_w", "bible_p0", "romantic_p06", "tweet_p0")
FIXTURE_DATA = ROOT / "tests" / "fixtures" / "data"
SMOKE_REQUESTS = 12  # a smoke run's requests per workload (its generations: 4 new tokens)
SMOKE_MODEL = {"num_hidden_layers": 4}  # the tiny Mixtral, deep enough for DoLa's `paper` layers


# -- in the child process ------------------------------------------------------------------------------------


def task_requests(tasks: list[str], data: Path) -> list:
    import moe_rbench_tasks

    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(data)})
    requests = []
    for task in manager.load(tasks)["tasks"].values():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        requests += task.instances
    return requests


def workload_requests(workload: str, smoke: bool = False) -> list:
    """loglikelihood: SST-2 and five style sets of the sample data (144 documents, 288 requests);
    snli: the full SNLI validation task from the data directory in MOE_RBENCH_DATA_DIR (29,526 requests);
    generate_until: 32 prompts, 32 new tokens each, greedy. `smoke`: the first `SMOKE_REQUESTS` of each, from the
    fixture data (SNLI's too), 4 new tokens."""
    from lm_eval.api.instance import Instance

    from moe_rbench_tasks.style_ood import load_docs

    if workload == "loglikelihood":
        requests = task_requests(["moe_rbench_sst2", *(f"moe_rbench_style_{s}" for s in STYLE_SETS)], FIXTURE_DATA)
    elif workload == "snli":
        requests = task_requests(["moe_rbench_snli"], FIXTURE_DATA if smoke else benchmark_data_dir())
    else:
        sentences = [
            doc["sentence"]
            for style in ("base", "tweet_p0")
            for doc in load_docs(subset=style, data_dir=FIXTURE_DATA)["test"]
        ]
        gen = {"until": ["\n\n"], "max_gen_toks": 4 if smoke else 32, "do_sample": False}
        requests = [
            Instance("generate_until", {}, ("Q: " + s + "\nA:", dict(gen)), 0, metadata=("bench", i, 1))
            for i, s in enumerate(sentences[:32])
        ]
    return requests[:SMOKE_REQUESTS] if smoke else requests


def benchmark_data_dir() -> Path:
    """The data directory of the benchmarks that need the full release files."""
    if not os.environ.get("MOE_RBENCH_DATA_DIR"):
        sys.exit("Set MOE_RBENCH_DATA_DIR to the data directory with the release files (or run with --smoke).")
    return Path(os.environ["MOE_RBENCH_DATA_DIR"])


@contextmanager
def perf_counting(control: str, ack: str) -> Iterator[None]:
    """perf counts only inside this block: enabled and disabled through its control FIFO (`-`: perf is not used)."""
    if control == "-":
        yield
        return
    with open(control, "w") as ctl, open(ack) as acknowledge:
        ctl.write("enable\n")
        ctl.flush()
        acknowledge.readline()
        yield
        ctl.write("disable\n")
        ctl.flush()
        acknowledge.readline()


def child(spec: dict, control: str, ack: str) -> dict:
    import torch
    from lm_eval.models.huggingface import HFLM

    from moe_rbench_models import MoEHFLM

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    kwargs = dict(device=device, batch_size=8 if spec["workload"] == "generate_until" else 16, **spec["kwargs"])
    lm = HFLM(**kwargs) if spec["model"] == "hf" else MoEHFLM(**kwargs)
    if spec.get("patch"):
        module, function = spec["patch"].split(":")
        getattr(importlib.import_module(module), function)(lm)
    requests = workload_requests(spec["workload"], smoke=spec.get("smoke", False))
    run = getattr(lm, "loglikelihood" if spec["workload"] == "snli" else spec["workload"])
    run(requests[:8], disable_tqdm=True)  # warm-up, not measured
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
    with perf_counting(control, ack):
        start = time.perf_counter()
        run(requests, disable_tqdm=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if hasattr(lm, "close"):  # publish the routing records
        lm.close()
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    return {"seconds": seconds, "peak_bytes": peak, "requests": len(requests)}


# -- in the parent -------------------------------------------------------------------------------------------


def perf_available() -> bool:
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "true"], capture_output=True, text=True)
    return probe.returncode == 0 and "not supported" not in probe.stderr and "<not" not in probe.stderr


def run_once(spec: dict, use_perf: bool, work: Path, in_process: bool | None = None) -> dict:
    """One run of `spec`: a fresh process (under `perf stat` with `use_perf`), or this one (`in_process`; by default
    for a smoke run, which takes seconds and measures nothing; tests/test_benchmarks.py runs a fresh one apart)."""
    if spec.get("smoke") if in_process is None else in_process:
        return child(spec, "-", "-")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, str(Path(__file__)), json.dumps(spec)]
    if not use_perf:
        output = subprocess.run([*command, "-", "-"], capture_output=True, text=True, check=True, env=env)
        return json.loads(output.stdout.strip().splitlines()[-1])
    control, ack = work / "perf_control", work / "perf_ack"
    for fifo in (control, ack):
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    command = [
        "perf",
        "stat",
        "-x,",
        "-e",
        "instructions,cycles",
        "--delay=-1",
        f"--control=fifo:{control},{ack}",
        "--",
        *command,
        str(control),
        str(ack),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    result = json.loads(output.stdout.strip().splitlines()[-1])
    for line in output.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in ("instructions", "cycles") and fields[0].isdigit():
            result[fields[2]] = int(fields[0])
    return result


def interleaved(specs: dict[str, dict], rounds: int, use_perf: bool, work: Path) -> dict[str, list[dict]]:
    """Every configuration `rounds` times, in rotated order, each run a fresh process."""
    names = list(specs)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(run_once(specs[name], use_perf, work))
    return runs


def report(title: str, runs: dict[str, list[dict]], baseline: str, use_perf: bool) -> dict[str, dict]:
    """Print medians with their ratios to `baseline`; return the medians."""
    metrics = ["seconds", "peak_bytes"] + (["instructions", "cycles"] if use_perf else [])
    median = {
        name: {m: statistics.median(run[m] for run in results) for m in metrics} for name, results in runs.items()
    }
    base = median[baseline]
    print(f"\n{title} ({runs[baseline][0]['requests']} requests), medians; ratio to {baseline} in brackets")
    for name, values in median.items():
        cells = [
            f"{values['seconds']:7.2f} s [{values['seconds'] / base['seconds']:.3f}]",
            f"peak {values['peak_bytes'] / 2**20:6.0f} MiB [{values['peak_bytes'] / base['peak_bytes']:.3f}]",
        ]
        if use_perf:
            cells += [
                f"{values[m] / 1e9:7.2f} G{m[:5]} [{values[m] / base[m]:.4f}]" for m in ("instructions", "cycles")
            ]
        print(f"  {name:22} " + "   ".join(cells))
    print(
        "  wall seconds per run: "
        + "; ".join(f"{name}: " + ", ".join(f"{r['seconds']:.1f}" for r in results) for name, results in runs.items())
    )
    return median


def setup(model_config: dict, workloads: bool = False):
    """Command-line options (`--rounds`, `--threads`, `--device`, `--smoke`, optionally `--workloads`), a work folder
    with the benchmark model (a tiny one with `--smoke`), its parameter count and whether perf counters
    are available (never used by a smoke run)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    if workloads:
        parser.add_argument("--workloads", nargs="+", default=["loglikelihood", "generate_until"])
    args = parser.parse_args()
    if args.smoke:
        args.rounds = 1
        print(
            "smoke run (a tiny model, one round, a few requests): it checks that the benchmark runs; "
            "its numbers mean nothing"
        )
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="moe_rbench_bench_"))
    model_dir, parameters = build_model(work, **(SMOKE_MODEL if args.smoke else model_config))
    return args, work, model_dir, parameters, perf_available() and not args.smoke


def build_model(work: Path, **config) -> tuple[Path, int]:
    """A Mixtral-style checkpoint with random weights; its path and parameter count."""
    from transformers import AutoModelForCausalLM

    from moe_rbench_models.tiny import build_tiny_model

    model_dir = build_tiny_model("mixtral", work / "model", **config)
    return model_dir, sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])))
