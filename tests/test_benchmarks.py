"""Every benchmark still runs: its `--smoke` mode (a tiny model, one round, a few requests; seconds) in the suite,
so that `make test` fails when a benchmark breaks. Full runs are measurements, run by hand (benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from helpers import run

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HELPERS = {"measure.py"}  # shared by the overhead benchmarks, not one itself (its fresh-process run is tested below)

_spec = importlib.util.spec_from_file_location("measure", BENCHMARKS / "measure.py")
measure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measure)


@pytest.mark.parametrize("benchmark", sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name not in HELPERS))
def test_every_benchmark_runs_in_smoke_mode(benchmark):
    result = run([sys.executable, str(BENCHMARKS / benchmark), "--smoke"], timeout=240)
    assert result.stdout.strip(), result.stderr


def test_a_measured_run_in_a_fresh_process_reports_its_workload(tiny_model, tmp_path):
    spec = {"model": "moe_hf", "kwargs": {"pretrained": str(tiny_model("mixtral"))}, "workload": "generate_until"}
    spec.update(device="cpu", threads=1, smoke=True)
    result = measure.run_once(spec, use_perf=False, work=tmp_path, in_process=False)
    assert result["requests"] == measure.SMOKE_REQUESTS
    assert result["seconds"] > 0 and result["peak_bytes"] > 0
