"""The safety suite's generation on `moe_hf` and on `moe_vllm`, capture off and on: throughput and capture's price.

    .venv-vllm/bin/python benchmarks/vllm/generation.py [--size 50m|olmoe] [--rounds 3] [--device cpu|cuda]
        [--prompts 64] [--max_gen_toks 64] [--compiled] [--hf_python .venv/bin/python] [--smoke]

Runs in the vLLM environment (`make vllm-setup`); moe_hf runs in the main one (`--hf_python`, `make setup`), as vLLM
pins an older transformers. The prompts are the safety suite's (malicious, CoNa, controversial, Do-Not-Answer: the
moe_rbench_safety group, from MOE_RBENCH_DATA_DIR), the first `--prompts` of them, each generating up to
`--max_gen_toks` tokens greedily. Configurations, each a fresh process, interleaved over `--rounds`:

- `moe_hf`, `moe_hf_capture` (routing_out): transformers, batch 8;
- `vllm_eager`: moe_vllm with no MoE option, eager and without prefix caching as capture needs (lm-eval's `vllm`);
- `moe_vllm_capture` (routing_out): the same engine with the worker extension capturing every position;
- `vllm_compiled` (`--compiled`; the default on CUDA): plain vLLM as users run it, compiled with CUDA graphs.

Printed: median wall seconds of the generation alone (model loading excluded), generated tokens per second, and the
ratios: moe_vllm's throughput over moe_hf's, and capture's cost over plain eager vLLM (goal: at most 1.10x).

`--size 50m`: a Mixtral-style model of ~53M parameters (hidden 512, 6 layers, 8 experts top-2, head 64), vocabulary
512 (the project's tokenizer). `--size olmoe`: OLMoE-1B-7B's shape (hidden 2048, 16 layers, 64 experts top-8,
expert width 1024, vocabulary 50,304; random weights, bfloat16), for a GPU machine. `--smoke`: the tiny vLLM model,
4 prompts of the fixture data x 4 tokens, one round: checks that the benchmark runs (tests_vllm runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_DATA = ROOT / "tests" / "fixtures" / "data"
RESULT = "moe-rbench-result: "  # the child's result line (vLLM writes to stdout too)
SIZES = {
    "50m": {
        "architecture": "mixtral",
        "config": {"hidden_size": 512, "intermediate_size": 640, "num_hidden_layers": 6, "num_attention_heads": 8},
        "dtype": "float32",
    },
    "olmoe": {
        "architecture": "olmoe",
        "config": {
            "hidden_size": 2048,
            "intermediate_size": 1024,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "head_dim": 128,
            "num_experts": 64,
            "num_experts_per_tok": 8,
            "vocab_size": 50304,
        },
        "dtype": "bfloat16",
    },
}


def prompts(count: int, data_dir: Path) -> list[str]:
    """The first `count` prompts of the safety suite's generation tasks, as lm-eval builds them."""
    import moe_rbench_tasks

    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(data_dir)})
    texts: list[str] = []
    for _, task in sorted(manager.load(["moe_rbench_safety"])["tasks"].items()):
        task.build_all_requests(limit=None, rank=0, world_size=1)
        texts += [instance.args[0] for instance in task.instances]
    return texts[:count]


def child(spec: dict) -> dict:
    """One configuration in this process: load, warm up on two prompts, time the generation."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    import moe_rbench.hook

    moe_rbench.hook.install()
    lm = get_model(spec["model"]).create_from_arg_obj(spec["model_args"], {"batch_size": spec["batch_size"]})
    gen = {"until": [], "max_gen_toks": spec["max_gen_toks"], "do_sample": False}
    requests, warm_up = (
        [Instance("generate_until", {}, (text, dict(gen)), 0, metadata=(task, i, 1)) for i, text in enumerate(texts)]
        for task, texts in (("bench", spec["prompts"]), ("warm_up", spec["prompts"][:2]))
    )
    lm.generate_until(warm_up, disable_tqdm=True)  # not measured
    start = time.perf_counter()
    outputs = lm.generate_until(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    if hasattr(lm, "close"):  # publish the routing records
        lm.close()
    tokens = sum(len(lm.tok_encode(text)) for text in outputs)
    return {"seconds": seconds, "tokens": tokens, "requests": len(requests)}


def build(size: str, work: Path, smoke: bool) -> Path:
    from moe_rbench_models.vllm.tiny import build_vllm_tiny_model

    if smoke:
        return build_vllm_tiny_model("mixtral", work / "model")
    return build_sized_model(SIZES[size], work / "model")


def build_sized_model(size: dict, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from moe_rbench_models.tiny import ARCHITECTURES, tiny_tokenizer
    from moe_rbench_models.vllm.tiny import VLLM_ARCHITECTURES

    architecture = size["architecture"]
    fields = {**ARCHITECTURES[architecture], **VLLM_ARCHITECTURES[architecture], **size["config"]}
    config = AutoConfig.for_model(architecture, **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, size["dtype"]))
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def specs(args, model_dir: Path, work: Path, texts: list[str]) -> dict[str, dict]:
    dtype = "float32" if args.smoke else SIZES[args.size]["dtype"]
    common = {"prompts": texts, "max_gen_toks": args.max_gen_toks}
    hf = {**common, "model": "moe_hf", "batch_size": 8, "python": args.hf_python}
    hf["model_args"] = {"pretrained": str(model_dir), "dtype": dtype, "device": args.device}
    vllm = {**common, "model": "moe_vllm", "batch_size": "auto", "python": sys.executable}
    vllm["model_args"] = {"pretrained": str(model_dir), "dtype": dtype, "max_model_len": 1024, "seed": 0}
    eager = {"enforce_eager": True, "enable_prefix_caching": False}
    configurations = {
        "moe_hf": hf,
        "moe_hf_capture": {**hf, "model_args": {**hf["model_args"], "routing_out": str(work / "hf-routing")}},
        "vllm_eager": {**vllm, "model_args": {**vllm["model_args"], **eager}},
        "moe_vllm_capture": {**vllm, "model_args": {**vllm["model_args"], "routing_out": str(work / "vllm-routing")}},
    }
    if args.compiled or args.device.startswith("cuda"):
        configurations["vllm_compiled"] = {**vllm, "model_args": {**vllm["model_args"], "enforce_eager": False}}
    return configurations


def run_once(spec: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if spec["model_args"].get("routing_out"):  # each run replaces the last run's records: they are timed, not read
        spec = {**spec, "model_args": {**spec["model_args"], "routing_overwrite": True}}
    done = subprocess.run(
        [spec["python"], __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if done.returncode != 0:
        sys.exit(f"{spec['model']} {spec['model_args']} failed:\n{done.stderr[-4000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith(RESULT))[len(RESULT) :])


def report(runs: dict[str, list[dict]]) -> None:
    median = {name: statistics.median(r["seconds"] for r in results) for name, results in runs.items()}
    tokens = {name: results[0]["tokens"] for name, results in runs.items()}
    first = next(iter(runs.values()))[0]
    print(f"\ngeneration of {first['requests']} prompts; medians of wall seconds (generation only)")
    for name, seconds in median.items():
        print(f"  {name:18} {seconds:8.2f} s   {tokens[name] / seconds:9.1f} tokens/s   ({tokens[name]} tokens)")
    ratios = {
        "moe_vllm capture vs moe_hf capture, throughput": median["moe_hf_capture"] / median["moe_vllm_capture"],
        "plain eager vLLM vs moe_hf, throughput": median["moe_hf"] / median["vllm_eager"],
        "capture's cost over plain eager vLLM (goal <= 1.10)": median["moe_vllm_capture"] / median["vllm_eager"],
    }
    if "vllm_compiled" in median:
        ratios["capture's cost over compiled vLLM"] = median["moe_vllm_capture"] / median["vllm_compiled"]
    for what, ratio in ratios.items():
        print(f"  {what:52} {ratio:.3f}x")
    per_run = "; ".join(f"{n}: " + ", ".join(f"{r['seconds']:.1f}" for r in rs) for n, rs in runs.items())
    print(f"  wall seconds per run: {per_run}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(SIZES), default="50m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max_gen_toks", type=int, default=64)
    parser.add_argument("--compiled", action="store_true", help="also plain vLLM compiled (the default on CUDA)")
    parser.add_argument("--hf_python", default=str(ROOT / ".venv" / "bin" / "python"), help="moe_hf's environment")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 4 prompts x 4 tokens, one round")
    args = parser.parse_args()
    if args.child:
        print(RESULT + json.dumps(child(json.loads(args.child))), flush=True)
        return
    if args.smoke:
        args.rounds, args.prompts, args.max_gen_toks = 1, 4, 4
        print("smoke run (a tiny model, one round, 4 prompts): it checks that the benchmark runs; numbers mean nothing")
    data = FIXTURE_DATA if args.smoke else Path(os.environ.get("MOE_RBENCH_DATA_DIR", ""))
    if not (data / "safety_tuned_llamas").is_dir():
        sys.exit("Set MOE_RBENCH_DATA_DIR to the data directory with the release files (or run with --smoke).")
    work = Path(tempfile.mkdtemp(prefix="moe_rbench_vllm_bench_"))
    model_dir = build(args.size, work, args.smoke)
    configurations = specs(args, model_dir, work, prompts(args.prompts, data))
    print(f"model: {'tiny' if args.smoke else args.size}, device {args.device}, {args.rounds} rounds")
    names = list(configurations)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(run_once(configurations[name]))
    report(runs)


if __name__ == "__main__":
    main()
