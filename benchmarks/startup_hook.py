"""What the start-up hook costs every Python process of an environment where moe-rbench is installed.

    python benchmarks/startup_hook.py [--runs 30] [--smoke]

1. `-X importtime`: import time of the module the `.pth` line imports (package `__init__` included), at
   a real interpreter start, with byte code written as an installed package has it (this sandbox sets
   PYTHONDONTWRITEBYTECODE, which would make every run compile the source);
2. the finder's cost per later import that is not one it waits for (a dict lookup), and that cost
   over all the modules an lm-eval HF evaluation imports.

`--smoke`: one run and a few finder calls (seconds; checks that it runs).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

from moe_rbench import hook


def hook_import_ms(runs: int, env: dict) -> float:
    times = []
    for _ in range(runs + 1):  # the first run writes the byte code
        stderr = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True, env=env
        ).stderr
        (cumulative,) = re.findall(r"\|\s*(\d+) \|\s*moe_rbench\.hook$", stderr, re.M)
        times.append(int(cumulative) / 1000)
    return statistics.median(times[1:])


def finder_miss_ns(calls: int = 200_000) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        hook._finder.find_spec("some_module_the_hook_does_not_wait_for")
    return (time.perf_counter_ns() - start) / calls


def modules_imported_by_an_hf_evaluation(env: dict) -> int:
    probe = "import sys, lm_eval.evaluator, lm_eval.models.huggingface; print(len(sys.modules))"
    return int(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="one run, a few finder calls: checks that it runs")
    args = parser.parse_args()
    runs = 1 if args.smoke else args.runs
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    miss_ns = finder_miss_ns(1_000 if args.smoke else 200_000)
    modules = modules_imported_by_an_hf_evaluation(env)
    print(f"hook import + install at interpreter start (median of {runs}): {hook_import_ms(runs, env):.2f} ms")
    print(
        f"finder cost per unrelated import: {miss_ns:.0f} ns; over the {modules} modules of an lm-eval "
        f"HF evaluation: {miss_ns * modules / 1e6:.2f} ms"
    )


if __name__ == "__main__":
    main()
