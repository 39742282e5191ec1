"""What routing capture costs: `hf` vs `moe_hf` (capture off) vs `moe_hf` (capture on).

    python benchmarks/routing_overhead.py [--rounds 3] [--threads 1] [--device cpu]

Builds a ~52M-parameter Mixtral-style model (hidden 512, 5 layers, 8 experts, top-2, vocabulary 32,000,
random weights) and runs two workloads:
- loglikelihood: SST-2 and five style sets of the sample data (144 documents, 288 requests, batch 16);
- generation: 32 prompts, 32 new tokens each, greedy, batch 8.

Every run is a fresh process; runs of the three configurations are interleaved (rotated order, `--rounds`
times). Inside each run only the workload is measured (after a small warm-up): wall time, CPU instructions
and cycles (`perf stat`, counting switched on and off around the workload; absent where perf counters are
not available), and peak memory during the workload (resident set with the kernel's high-water mark
reset just before it, or peak allocated CUDA memory). Reported: medians and their ratios to `hf`, and
record bytes per token per MoE layer.

Why instructions: on the shared 2-core development machine, the same workload's wall time drifts by
15-40% across minutes (one thread or two), which buries a few percent; instruction counts repeat within
a fraction of a percent and measure the work capture adds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("hf", "moe_hf_off", "moe_hf_capture")
MODEL = dict(hidden_size=512, intermediate_size=512, num_hidden_layers=5, num_attention_heads=8,
             num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
             tie_word_embeddings=True)  # fmt: skip

CHILD = r"""
import json, re, sys, time
config, workload, model_dir, routing_dir, device, threads, root, control, ack = sys.argv[1:10]
sys.path.insert(0, root)
import torch
torch.set_num_threads(int(threads))
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
import moe_rbench_tasks
from moe_rbench_models import MoEHFLM
from moe_rbench_tasks.style_ood import load_docs

data = root + "/tests/fixtures/data"
kwargs = dict(pretrained=model_dir, device=device, batch_size=16 if workload == "loglikelihood" else 8)
lm = HFLM(**kwargs) if config == "hf" else MoEHFLM(**kwargs, **({"routing_out": routing_dir} if config == "moe_hf_capture" else {}))
if workload == "loglikelihood":
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": data})
    names = ["moe_rbench_sst2"] + ["moe_rbench_style_" + s for s in ("augment", "shake_w", "bible_p0", "romantic_p06", "tweet_p0")]
    requests = []
    for task in manager.load(names)["tasks"].values():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        requests += task.instances
else:
    sentences = [doc["sentence"] for style in ("base", "tweet_p0") for doc in load_docs(style=style, data_dir=data)["test"]]
    gen = {"until": ["\n\n"], "max_gen_toks": 32, "do_sample": False}
    requests = [Instance("generate_until", {}, ("Q: " + s + "\nA:", dict(gen)), 0, metadata=("bench", i, 1)) for i, s in enumerate(sentences[:32])]
run = getattr(lm, workload)
run(requests[:8], disable_tqdm=True)  # warm-up, not measured
if device.startswith("cuda"):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
else:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set (VmHWM)
counting = control != "-"
if counting:
    ctl, acknowledge = open(control, "w"), open(ack)
    ctl.write("enable\n"); ctl.flush(); acknowledge.readline()
start = time.perf_counter()
run(requests, disable_tqdm=True)
if device.startswith("cuda"):
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
if counting:
    ctl.write("disable\n"); ctl.flush(); acknowledge.readline()
peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"seconds": seconds, "peak_bytes": peak, "requests": len(requests)}))
"""


def perf_available() -> bool:
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "true"], capture_output=True, text=True)
    return probe.returncode == 0 and "not supported" not in probe.stderr and "<not" not in probe.stderr


def run_once(config: str, workload: str, model_dir: Path, routing_dir: Path, device: str, threads: int,
             use_perf: bool, work: Path) -> dict:  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = [sys.executable, "-c", CHILD, config, workload, str(model_dir), str(routing_dir), device, str(threads), str(ROOT)]
    if not use_perf:
        output = subprocess.run([*child, "-", "-"], capture_output=True, text=True, check=True, env=env)
        return json.loads(output.stdout.strip().splitlines()[-1])
    control, ack = work / "perf_control", work / "perf_ack"
    for fifo in (control, ack):
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    command = ["perf", "stat", "-x,", "-e", "instructions,cycles", "--delay=-1", f"--control=fifo:{control},{ack}",
               "--", *child, str(control), str(ack)]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    result = json.loads(output.stdout.strip().splitlines()[-1])
    for line in output.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in ("instructions", "cycles") and fields[0].isdigit():
            result[fields[2]] = int(fields[0])
    return result


def record_bytes_per_token_layer(routing_dir: Path) -> float:
    import numpy as np

    manifest = json.loads((routing_dir / "routing.json").read_text())
    positions = sum(len(np.load(routing_dir / name)["decoder.tokens"]) for name in manifest["shards"])
    size = sum((routing_dir / name).stat().st_size for name in manifest["shards"])
    return size / positions / len(manifest["layers"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from transformers import AutoModelForCausalLM

    from moe_rbench_models.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="moe_rbench_bench_"))
    model_dir = build_tiny_model("mixtral", work / "model", **MODEL)
    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    use_perf = perf_available()
    print(f"model: Mixtral-style, {parameters / 1e6:.1f}M parameters; device {args.device}, {args.threads} thread(s), "
          f"{args.rounds} rounds, perf counters: {'yes' if use_perf else 'not available'}")  # fmt: skip
    metrics = ["seconds", "peak_bytes"] + (["instructions", "cycles"] if use_perf else [])
    for workload in ("loglikelihood", "generate_until"):
        runs: dict[str, list[dict]] = {config: [] for config in CONFIGS}
        for round_index in range(args.rounds):
            for config in CONFIGS[round_index % 3 :] + CONFIGS[: round_index % 3]:
                runs[config].append(run_once(config, workload, model_dir, work / f"routing_{workload}", args.device,
                                             args.threads, use_perf, work))  # fmt: skip
        median = {config: {m: statistics.median(run[m] for run in runs[config]) for m in metrics} for config in CONFIGS}
        print(f"\n{workload} ({runs['hf'][0]['requests']} requests), medians; ratio to hf in brackets")
        for config in CONFIGS:
            cells = [f"{median[config]['seconds']:7.2f} s [{median[config]['seconds'] / median['hf']['seconds']:.3f}]",
                     f"peak {median[config]['peak_bytes'] / 2**20:6.0f} MiB [{median[config]['peak_bytes'] / median['hf']['peak_bytes']:.3f}]"]  # fmt: skip
            if use_perf:
                cells += [f"{median[config][m] / 1e9:7.2f} G{m[:5]} [{median[config][m] / median['hf'][m]:.4f}]"
                          for m in ("instructions", "cycles")]  # fmt: skip
            print(f"  {config:15} " + "   ".join(cells))
        print(f"  records: {record_bytes_per_token_layer(work / f'routing_{workload}'):.1f} bytes per token per MoE layer")
        print("  wall seconds per run: " + "; ".join(f"{c}: " + ", ".join(f"{r['seconds']:.1f}" for r in runs[c]) for c in CONFIGS))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
