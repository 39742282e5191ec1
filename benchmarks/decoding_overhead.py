"""What contrastive decoding costs: plain `moe_hf` vs DoLa (and SCMoE), scoring and generation.

    python benchmarks/decoding_overhead.py [--rounds 3] [--threads 1] [--device cpu] [--workloads ...] [--smoke]

The ~52M-parameter Mixtral-style model of routing_overhead.py (5 layers, vocabulary 32,000), DoLa with
two candidate layers (`dola_layers=paper`: 2 and 4), and the workloads of measure.py: loglikelihood (288
requests, batch 16) and generation (32 prompts x 32 new tokens, greedy, batch 8). Goals: DoLa scoring
<= 1.5x plain scoring, DoLa generation <= 1.6x greedy. For comparison, `dola_every_position` computes the
premature projections at every position of every row and in one block, as the DoLa reference code does;
`scmoe` is self-contrast (a second, top-1 forward pass).
"""

from __future__ import annotations

import shutil

import torch
from measure import interleaved, report, setup
from routing_overhead import MODEL

DOLA = {"dola_layers": "paper", "dola_relative_top": 0.0}


def every_position(lm) -> None:
    """Patch (scoring): project every position of every candidate layer right after the forward pass, in
    one block, and let `score_row` read from those projections: the reference's strategy."""
    contrast = lm._contrast
    branches = contrast.branches

    def project_everything(module, args, kwargs, output):
        hidden = branches(module, args, kwargs, output)
        if contrast.mode == "score":
            return [contrast.project([h])[0] for h in hidden]  # [batch, positions, V] log-probs
        return hidden

    def score_row(mature, row, start):
        with torch.no_grad():
            positions = slice(start, start + mature.shape[0])
            branch = torch.stack([log_probs[row, positions] for log_probs in contrast._hidden])
            return contrast.contrast(mature.float(), branch, -1000.0)

    contrast.branches, contrast.score_row = project_everything, score_row


def main() -> None:
    args, work, model_dir, parameters, use_perf = setup(MODEL, workloads=True)
    print(
        f"model: Mixtral-style, {parameters / 1e6:.1f}M parameters; DoLa candidates 2 and 4 of 5 layers; device "
        f"{args.device}, {args.threads} thread(s), {args.rounds} rounds, perf counters: "
        f"{'yes' if use_perf else 'not available'}"
    )
    for workload in args.workloads:
        base = {
            "model": "moe_hf",
            "workload": workload,
            "device": args.device,
            "threads": args.threads,
            "smoke": args.smoke,
        }
        model = {"pretrained": str(model_dir)}
        specs = {
            "plain": {**base, "kwargs": model},
            "dola": {**base, "kwargs": {**model, **DOLA}},
            "scmoe": {**base, "kwargs": {**model, "scmoe_beta": 0.5}},
        }
        if workload == "loglikelihood":
            specs["dola_every_position"] = {**specs["dola"], "patch": "decoding_overhead:every_position"}
        report(workload, interleaved(specs, args.rounds, use_perf, work), "plain", use_perf)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
