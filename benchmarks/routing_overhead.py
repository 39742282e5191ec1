"""What routing capture costs: `hf` vs `moe_hf` (capture off) vs `moe_hf` (capture on).

    python benchmarks/routing_overhead.py [--rounds 3] [--device cpu]

Builds a ~52M-parameter Mixtral-style model (hidden 512, 5 layers, 8 experts, top-2, vocabulary 32,000,
random weights) and measures, in a fresh process per run and in interleaved order:
- a loglikelihood workload: the Style-OOD group on the sample data (264 documents, 528 requests);
- a generation workload: 32 prompts, 32 new tokens each, greedy.
Reports the median wall time of each configuration relative to `hf`, the peak memory (resident set on
CPU, allocated memory on CUDA) relative to `hf`, and the record size in bytes per token per layer.
"""

from __future__ import annotations

import argparse
import json
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
import json, os, resource, sys, time
import torch
from lm_eval.api.instance import Instance
config, workload, model_dir, routing_dir, device = sys.argv[1:6]
import moe_rbench_tasks
from moe_rbench_models import MoEHFLM
from lm_eval.models.huggingface import HFLM
from moe_rbench_tasks.style_ood import load_docs
kwargs = dict(pretrained=model_dir, device=device, batch_size=16 if workload == "loglikelihood" else 8)
lm = HFLM(**kwargs) if config == "hf" else MoEHFLM(**kwargs, **({"routing_out": routing_dir} if config == "moe_hf_capture" else {}))
data = os.path.join(sys.argv[6], "tests", "fixtures", "data")
if workload == "loglikelihood":
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": data})
    tasks = manager.load(["moe_rbench_ood"])["tasks"]
    requests = []
    for task in tasks.values():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        requests += task.instances
    run = lambda: lm.loglikelihood(requests, disable_tqdm=True)
else:
    sentences = [doc["sentence"] for style in ("base", "tweet_p0") for doc in load_docs(style=style, data_dir=data)["test"]]
    requests = [Instance("generate_until", {}, (f"Q: {s}\nA:", {"until": ["\n\n"], "max_gen_toks": 32, "do_sample": False}), 0, metadata=("bench", i, 1))
                for i, s in enumerate(sentences[:32])]
    run = lambda: lm.generate_until(requests, disable_tqdm=True)
if device.startswith("cuda"):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
run()
if device.startswith("cuda"):
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_bytes": peak, "requests": len(requests)}))
"""


def build_model(path: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from moe_rbench_models.tiny import build_tiny_model

    return build_tiny_model("mixtral", path, **MODEL)


def measure(config: str, workload: str, model_dir: Path, routing_dir: Path, device: str) -> dict:
    output = subprocess.run([sys.executable, "-c", CHILD, config, workload, str(model_dir), str(routing_dir), device,
                             str(ROOT)], capture_output=True, text=True, check=True,
                            env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                 "PATH": "/usr/bin:/bin"})  # fmt: skip
    return json.loads(output.stdout.strip().splitlines()[-1])


def record_bytes_per_token_layer(routing_dir: Path) -> float:
    import numpy as np

    manifest = json.loads((routing_dir / "routing.json").read_text())
    positions = sum(len(np.load(routing_dir / name)["decoder.tokens"]) for name in manifest["shards"])
    size = sum((routing_dir / name).stat().st_size for name in manifest["shards"])
    return size / positions / len(manifest["layers"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="moe_rbench_bench_"))
    model_dir = build_model(work / "model")
    import torch
    from transformers import AutoModelForCausalLM

    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    print(f"model: Mixtral-style, {parameters / 1e6:.1f}M parameters, device {args.device}")
    for workload in ("loglikelihood", "generate_until"):
        times = {config: [] for config in CONFIGS}
        peaks = {config: [] for config in CONFIGS}
        for round_index in range(args.rounds):
            order = CONFIGS[round_index % 3 :] + CONFIGS[: round_index % 3]  # rotate who runs first
            for config in order:
                result = measure(config, workload, model_dir, work / f"routing_{workload}", args.device)
                times[config].append(result["seconds"])
                peaks[config].append(result["peak_bytes"])
        base_time, base_peak = statistics.median(times["hf"]), statistics.median(peaks["hf"])
        print(f"\n{workload} ({result['requests']} requests), median of {args.rounds}:")
        for config in CONFIGS:
            time_, peak = statistics.median(times[config]), statistics.median(peaks[config])
            print(f"  {config:15} {time_:7.2f} s  x{time_ / base_time:.3f}   peak {peak / 2**20:7.0f} MiB  x{peak / base_peak:.3f}")
        print(f"  records: {record_bytes_per_token_layer(work / f'routing_{workload}'):.1f} bytes per token per layer")
    del torch


if __name__ == "__main__":
    main()
