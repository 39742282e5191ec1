"""What the refusal judge costs per response, beside the rule-only first version it grew from.

    MOE_RBENCH_DATA_DIR=../shared/data .venv/bin/python benchmarks/refusal_judge.py --rounds 5 [--smoke]

Judges the 4,486 human-labelled responses of the data directory (XSTest v2, chatgpt-refusals, OpenAI's RBR gold set)
with both, interleaved, in one process, and prints the median time per response and the ratio. Budget: 2 ms a response
on one CPU core. `--smoke`: one round over the fixture data's labelled responses (seconds; checks that it runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from moe_rbench_tasks.judges.refusal import classify
from moe_rbench_tasks.judges.refusal_cues import declines_without_answering
from moe_rbench_tasks.judges.refusal_data import LabelledResponse, read_all

FIXTURE_DATA = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "data"


def seconds_per_response(judge, rows: list[LabelledResponse]) -> float:
    start = time.perf_counter()
    for row in rows:
        judge(row)
    return (time.perf_counter() - start) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data_dir", default=os.environ.get("MOE_RBENCH_DATA_DIR"))
    parser.add_argument("--smoke", action="store_true", help="one round on the fixture data: checks that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.data_dir = 1, FIXTURE_DATA
    if not args.data_dir:
        sys.exit("Set MOE_RBENCH_DATA_DIR or pass --data_dir: the directory with the labelled sets (or run --smoke).")
    rows = read_all(args.data_dir)
    judges = {
        "refusal judge (kinds)": lambda row: classify(row.prompt, row.response),
        "rules only (first version)": lambda row: declines_without_answering(row.response),
    }
    classify("", "warm up")
    times: dict[str, list[float]] = {name: [] for name in judges}
    for _ in range(args.rounds):
        for name, judge in judges.items():
            times[name].append(seconds_per_response(judge, rows))
    rules = statistics.median(times["rules only (first version)"])
    print(f"{len(rows)} responses, {args.rounds} rounds (medians)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32} {median * 1e3:7.3f} ms per response  [{median / rules:.2f}x the rules]")


if __name__ == "__main__":
    main()
