"""Evaluate one lm-eval model under several configurations through lm-eval's Python API, each writing its routing
records: test_moe_vllm.py runs it with `moe_hf` in the main environment (transformers 5.24) and with `moe_vllm` in
the vLLM one (vLLM pins an older transformers), so that both models' records can be compared.

    python tests_vllm/record_runs.py RUNS_JSON
    RUNS_JSON: {"model": "moe_hf", "tasks": [...], "limit": 8, "batch_size": 1,
                "runs": [{"out": DIR, "model_args": {...}, "gen_kwargs": "max_gen_toks=24" or null,
                          "count_preemptions": true (optional, moe_vllm: print vLLM's preemptions),
                          "env": {...} (optional: environment variables for the run)}, ...]}

A moe_vllm engine is shut down after its run, so that one engine at a time holds memory.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def run(model: str, model_args: dict, tasks: list[str], limit: int, batch_size, gen_kwargs: str | None) -> None:
    import lm_eval
    from lm_eval.api.registry import get_model

    lm = get_model(model).create_from_arg_obj(model_args, {"batch_size": batch_size})
    try:
        lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, batch_size=batch_size, gen_kwargs=gen_kwargs)
    finally:
        lm.close()
        if model == "moe_vllm":
            lm.model.llm_engine.engine_core.shutdown()
        del lm
        gc.collect()


@contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """Environment variables for one run (vLLM reads its settings from the environment when an engine starts)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def counting_preemptions() -> dict[str, int]:
    """Count vLLM's preemptions (its scheduler's `_preempt_request`, vllm/v1/core/sched/scheduler.py) in this process
    (engines in-process: VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    count = {"preemptions": 0}
    preempt = Scheduler._preempt_request

    def counted(self, *args, **kwargs):
        count["preemptions"] += 1
        return preempt(self, *args, **kwargs)

    Scheduler._preempt_request = counted
    return count


def main(path: str) -> None:
    import moe_rbench.hook

    moe_rbench.hook.install()
    with open(path, encoding="utf-8") as file:
        plan = json.load(file)
    for entry in plan["runs"]:
        model_args = {**entry["model_args"], "routing_out": entry["out"]}
        count = counting_preemptions() if entry.get("count_preemptions") else None
        started = time.perf_counter()
        with environment(entry.get("env", {})):
            run(plan["model"], model_args, plan["tasks"], plan["limit"], plan["batch_size"], entry.get("gen_kwargs"))
        print(f"recorded {entry['out']} in {time.perf_counter() - started:.1f} s", flush=True)
        if count is not None:
            print(f"preemptions: {count['preemptions']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
