"""Peak memory of routing capture at scale: `hf` vs `moe_hf` with `routing_out` on the full SNLI validation task.

    MOE_RBENCH_DATA_DIR=../shared/data python benchmarks/capture_memory.py [--rounds 1] [--smoke]

The model of routing_overhead.py (51.8M parameters), 29,526 loglikelihood requests (9,842 documents x 3
label words) at batch 16; each run a fresh process, only the workload measured (measure.py). Goal: peak
memory with capture on <= 1.10x `hf`. The capture keeps a digest per waiting request and writes records in
shards as it goes, so its memory does not grow with the run.
"""

from __future__ import annotations

import shutil

from measure import interleaved, report, setup
from routing_overhead import MODEL, record_bytes_per_token_layer


def main() -> None:
    args, work, model_dir, parameters, use_perf = setup(MODEL)
    print(
        f"model: Mixtral-style, {parameters / 1e6:.1f}M parameters; device {args.device}, {args.threads} thread(s), "
        f"{args.rounds} round(s)"
    )
    routing_dir = work / "routing"
    base = {
        "kwargs": {"pretrained": str(model_dir)},
        "workload": "snli",
        "device": args.device,
        "threads": args.threads,
        "smoke": args.smoke,
    }
    specs = {
        "hf": {**base, "model": "hf"},
        "moe_hf_capture": {
            **base,
            "model": "moe_hf",
            "kwargs": {**base["kwargs"], "routing_out": str(routing_dir), "routing_overwrite": True},
        },
    }
    report("SNLI validation", interleaved(specs, args.rounds, False, work), "hf", False)
    print(f"  records: {record_bytes_per_token_layer(routing_dir):.1f} bytes per token per MoE layer")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
