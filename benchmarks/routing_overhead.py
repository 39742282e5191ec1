"""What routing capture costs: `hf` vs `moe_hf` (capture off) vs `moe_hf` (capture on).

    python benchmarks/routing_overhead.py [--rounds 3] [--threads 1] [--device cpu] [--smoke]

Builds a ~52M-parameter Mixtral-style model (hidden 512, 5 layers, 8 experts, top-2, vocabulary 32,000,
random weights) and runs two workloads (measure.py): loglikelihood, 288 requests of SST-2 and five
style sets at batch 16; generation, 32 prompts x 32 new tokens, greedy, batch 8. Reported: medians of
interleaved fresh-process runs and their ratios to `hf`, and record bytes per token per MoE layer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from measure import interleaved, report, setup

MODEL = dict(
    hidden_size=512,
    intermediate_size=512,
    num_hidden_layers=5,
    num_attention_heads=8,
    num_key_value_heads=4,
    num_local_experts=8,
    num_experts_per_tok=2,
    vocab_size=32000,
    tie_word_embeddings=True,
)


def record_bytes_per_token_layer(routing_dir: Path) -> float:
    import numpy as np

    manifest = json.loads((routing_dir / "routing.json").read_text())
    positions = sum(len(np.load(routing_dir / name)["decoder.tokens"]) for name in manifest["shards"])
    size = sum((routing_dir / name).stat().st_size for name in manifest["shards"])
    return size / positions / len(manifest["layers"])


def main() -> None:
    args, work, model_dir, parameters, use_perf = setup(MODEL)
    print(
        f"model: Mixtral-style, {parameters / 1e6:.1f}M parameters; device {args.device}, {args.threads} thread(s), "
        f"{args.rounds} rounds, perf counters: {'yes' if use_perf else 'not available'}"
    )
    for workload in ("loglikelihood", "generate_until"):
        routing_dir = work / f"routing_{workload}"
        base = {
            "kwargs": {"pretrained": str(model_dir)},
            "workload": workload,
            "device": args.device,
            "threads": args.threads,
            "smoke": args.smoke,
        }
        specs = {
            "hf": {**base, "model": "hf"},
            "moe_hf_off": {**base, "model": "moe_hf"},
            "moe_hf_capture": {
                **base,
                "model": "moe_hf",
                "kwargs": {**base["kwargs"], "routing_out": str(routing_dir), "routing_overwrite": True},
            },
        }
        report(workload, interleaved(specs, args.rounds, use_perf, work), "hf", use_perf)
        print(f"  records: {record_bytes_per_token_layer(routing_dir):.1f} bytes per token per MoE layer")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
