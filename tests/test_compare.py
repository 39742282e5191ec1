"""`moe-rbench compare` as a strict CI gate, on real lm-eval output files of a tiny classifier.

Candidates are the baseline's own files with a planted change (a lost task, a NaN, documents that turned
wrong), so that the expected verdict is known exactly; the p-values are checked against formulas written here.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
from helpers import BIN, STYLE_OOD_TASKS, evaluate_to, run

from moe_rbench.compare import EXIT_FAILED, EXIT_INCOMPARABLE, EXIT_PASS, EXIT_USAGE
from moe_rbench_models import MoEHFLM
from moe_rbench_models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_model")
    return build_tiny_model(
        "mixtral", root / "mixtral", head="sequence_classification", num_labels=2, initializer_range=0.5
    )


def evaluate(model, out, **kwargs):
    lm = MoEHFLM(pretrained=str(model), device="cpu", batch_size=8, head="sequence_classification")
    return evaluate_to(out, lm, ["moe_rbench_ood"], **kwargs)


@pytest.fixture(scope="module")
def baseline(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare_runs") / "baseline"
    evaluate(model, out)
    return out


def compare(baseline, candidate, *flags):
    return run(
        [str(BIN / "moe-rbench"), "compare", "--baseline", str(baseline), "--candidate", str(candidate), *flags],
        check=False,
    )


def results_file(run_dir):
    (path,) = run_dir.rglob("results_*.json")
    return path


def edit_results(run_dir, change):
    path = results_file(run_dir)
    results = json.loads(path.read_text())
    change(results)
    path.write_text(json.dumps(results))


def status_of(output: str, metric: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith(f"| {metric} |")]
    return line.rstrip(" |").rsplit("| ", 1)[1]


def row(output: str, metric: str) -> list[str]:
    (line,) = [line for line in output.splitlines() if line.startswith(f"| {metric} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def with_wrong_documents(baseline, out, wrong: dict[str, int]) -> dict[str, list[int]]:
    """A copy of the baseline run in which `wrong[task]` documents it got right are wrong; its results are
    recomputed from the samples as lm-eval aggregates them (task: mean; group: unweighted mean of tasks)."""
    shutil.copytree(baseline, out)
    results_path = results_file(out)
    results = json.loads(results_path.read_text())
    flipped = {}
    for task in STYLE_OOD_TASKS:
        (samples_path,) = out.rglob(f"samples_{task}_*.jsonl")
        samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
        right = [sample["doc_id"] for sample in samples if sample["acc"] == 1.0][: wrong.get(task, 0)]
        assert len(right) == wrong.get(task, 0), f"{task}: too few correct documents to plant a change"
        for sample in samples:
            if sample["doc_id"] in right:
                sample["acc"] = 0.0
        samples_path.write_text("".join(json.dumps(sample) + "\n" for sample in samples))
        accuracy = sum(sample["acc"] for sample in samples) / len(samples)
        results["results"][task]["acc,none"] = accuracy
        flipped[task] = right
    styles = (
        results["groups"]["moe_rbench_ood_styles"],
        results["results"]["moe_rbench_ood_styles"],
    )  # lm-eval writes both
    for group in styles:
        group["acc,none"] = sum(results["results"][task]["acc,none"] for task in STYLE_OOD_TASKS[1:]) / 10
    results_path.write_text(json.dumps(results))
    return flipped


def test_a_run_compared_with_itself_passes_paired_and_unpaired(baseline):
    for flags, how in (([], "the unpaired rule"), (["--paired"], "the paired test at alpha 0.05")):
        same = compare(baseline, baseline, *flags)
        assert same.returncode == 0, same.stdout + same.stderr
        assert "FAIL" not in same.stdout and "| ok |" in same.stdout
        assert (
            headline(same.stdout) == f"PASS: All 12 baseline metrics within 0.01 of the baseline (12 compared by {how})"
        )
    assert "Paired tests on the same documents" in same.stdout
    assert row(same.stdout, "moe_rbench_sst2 / acc,none")[6:8] == ["1", "McNemar"]
    assert row(same.stdout, "moe_rbench_ood_styles / acc,none")[7] == "paired bootstrap"


def headline(output: str) -> str:
    """The verdict line under the title."""
    return output.splitlines()[2]


def test_a_lost_task_fails_unless_allowed_and_is_listed(baseline, tmp_path):
    candidate = tmp_path / "candidate"
    shutil.copytree(baseline, candidate)
    edit_results(candidate, lambda results: results["results"].pop("moe_rbench_style_augment"))
    lost = compare(baseline, candidate)
    assert lost.returncode == 1
    assert status_of(lost.stdout, "moe_rbench_style_augment / acc,none") == "missing"
    assert headline(lost.stdout) == (
        "FAIL: **1 of 12 metrics failed**; 11 compared by the unpaired rule: 1 missing from the candidate"
    )
    allowed = compare(baseline, candidate, "--allow_missing")
    assert allowed.returncode == 0
    assert status_of(allowed.stdout, "moe_rbench_style_augment / acc,none") == "missing (allowed)"
    # the headline says a metric is missing, never "All 12 baseline metrics within 0.01"
    assert headline(allowed.stdout) == (
        "PASS: 12 baseline metrics, 11 compared by the unpaired rule: 1 missing, allowed (--allow_missing)"
    )
    assert "listed, not failed (--allow_missing)" in allowed.stdout


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None], ids=["nan", "inf", "null"])
def test_a_non_finite_or_null_value_fails(baseline, tmp_path, value):
    candidate = tmp_path / "candidate"
    shutil.copytree(baseline, candidate)
    edit_results(candidate, lambda results: results["results"]["moe_rbench_sst2"].update({"acc,none": value}))
    result = compare(baseline, candidate)
    assert result.returncode == 1
    assert status_of(result.stdout, "moe_rbench_sst2 / acc,none") == "invalid"
    assert status_of(result.stdout, "moe_rbench_style_augment / acc,none") == "ok"
    backwards = compare(candidate, baseline)  # an invalid baseline cannot vouch for anything either
    assert backwards.returncode == 1 and status_of(backwards.stdout, "moe_rbench_sst2 / acc,none") == "invalid"


def test_runs_with_different_limits_or_versions_are_not_comparable(model, baseline, tmp_path):
    evaluate(model, tmp_path / "limited", limit=10)
    limited = compare(baseline, tmp_path / "limited")
    assert limited.returncode == 3 and limited.stdout == ""
    summary, *details = limited.stderr.splitlines()
    # a short summary first (11 tasks differ in their number of documents and their hash), then one line each
    assert summary == (
        "moe-rbench compare: the runs are not comparable: 22 difference(s) in 11 task(s) (n-samples in 11, "
        "task_hashes in 11); evaluate both runs with the same --limit, the same data and prompts (data directory, "
        "task options), or compare only the tasks evaluated alike (--metrics)"
    )
    assert details[0] == (
        "  moe_rbench_sst2: n-samples (number of evaluated documents (--limit)) 24 in the baseline, 10 in the candidate"
    )
    assert len(details) == 21 and details[-1] == "  ... and 2 more of the same kinds"
    assert max(len(line) for line in limited.stderr.splitlines()) < 300
    candidate = tmp_path / "candidate"
    shutil.copytree(baseline, candidate)
    edit_results(candidate, lambda results: results["versions"].update({"moe_rbench_style_tweet_p0": 2.0}))
    versions = compare(baseline, candidate)
    assert versions.returncode == 3 and "moe_rbench_style_tweet_p0: versions (task version) 1.0" in versions.stderr
    edit_results(candidate, lambda results: results["task_hashes"].update({"moe_rbench_sst2": "0" * 64}))
    hashes = compare(baseline, candidate)
    assert hashes.returncode == 3 and "moe_rbench_sst2: task_hashes (dataset/prompt hash)" in hashes.stderr


def test_exit_codes_tell_a_worse_run_a_usage_error_and_incomparable_runs_apart(baseline, tmp_path):
    """0 pass, 1 worse, 2 usage error (argparse, a bad option value, a run that cannot be read), 3 not comparable:
    the codes docs/reports.md documents for CI scripts."""
    worse = tmp_path / "worse"
    shutil.copytree(baseline, worse)
    edit_results(worse, lambda results: results["results"]["moe_rbench_sst2"].update({"acc,none": 0.0}))
    assert compare(baseline, baseline).returncode == 0
    assert compare(baseline, worse).returncode == 1
    assert compare(baseline, worse, "--max-dorp", "0.1").returncode == 2  # argparse: a typo in an option
    assert compare(baseline, tmp_path / "no_such_run").returncode == 2
    incomparable = tmp_path / "incomparable"
    shutil.copytree(baseline, incomparable)
    edit_results(incomparable, lambda results: results["n-shot"].update({"moe_rbench_sst2": 5}))
    result = compare(baseline, incomparable)
    assert result.returncode == 3
    documented = (Path(__file__).parents[1] / "docs" / "reports.md").read_text()
    table = documented[documented.index("| exit status | meaning |") :].split("\n\n")[0].splitlines()[2:]
    assert [line.split(" | ")[0] for line in table] == ["| 0", "| 1", "| 2", "| 3"]
    assert (EXIT_PASS, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPARABLE) == (0, 1, 2, 3)
    assert result.stderr.splitlines() == [
        "moe-rbench compare: the runs are not comparable: 1 difference(s) in 1 task(s) (n-shot in 1); evaluate both "
        "runs with the same --num_fewshot, or compare only the tasks evaluated alike (--metrics)",
        "  moe_rbench_sst2: n-shot (num_fewshot) 0 in the baseline, 5 in the candidate",
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--max_drop", "-1"],
            "moe-rbench compare: --max_drop -1.0: the tolerated drop must be 0 or more (e.g. --max_drop 0.01)",
        ),
        (
            ["--paired", "--alpha", "5"],
            "moe-rbench compare: --alpha 5.0: the significance level of --paired must be between 0 and 1",
        ),
        (["--alpha", "0"], "moe-rbench compare: --alpha 0.0: the significance level"),
        (["--max-drop", "nan"], "moe-rbench compare: --max_drop nan: the tolerated drop must be 0 or more"),
    ],
    ids=["negative_max_drop", "alpha_5", "alpha_0", "max_drop_nan"],
)
def test_an_impossible_tolerance_or_significance_level_is_refused(baseline, flags, message):
    result = compare(baseline, baseline, *flags)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(message), line


def exact_mcnemar(worse: int, better: int) -> float:
    n = worse + better
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(worse, better) + 1)) / 2**n)


def test_paired_tests_decide_where_the_unpaired_rule_would_not(baseline, tmp_path):
    # three SST-2 documents turned wrong: a drop of 3/24 fails the unpaired rule, but three discordant pairs
    # are no evidence (McNemar p = 0.25); two wrong documents in each of the ten styles are, for the group
    wrong = {"moe_rbench_sst2": 3, **{task: 2 for task in STYLE_OOD_TASKS[1:]}}
    candidate = tmp_path / "candidate"
    with_wrong_documents(baseline, candidate, wrong)
    unpaired = compare(baseline, candidate)
    assert unpaired.returncode == 1
    assert status_of(unpaired.stdout, "moe_rbench_sst2 / acc,none") == "FAIL"
    paired = compare(baseline, candidate, "--paired")
    assert paired.returncode == 1
    sst2 = row(paired.stdout, "moe_rbench_sst2 / acc,none")
    assert sst2[7:] == ["McNemar", "ok"] and float(sst2[6]) == pytest.approx(exact_mcnemar(3, 0), rel=1e-3)
    assert float(sst2[6]) == pytest.approx(0.25)
    # the change's standard error is the paired one: of 24 document differences, three -1s
    assert float(sst2[5]) == pytest.approx(statistics.stdev([-1] * 3 + [0] * 21) / math.sqrt(24), abs=1e-4)
    for task in STYLE_OOD_TASKS[1:]:
        style = row(paired.stdout, f"{task} / acc,none")
        assert style[7:] == ["McNemar", "ok"] and float(style[6]) == pytest.approx(exact_mcnemar(2, 0))
    group = row(paired.stdout, "moe_rbench_ood_styles / acc,none")
    assert group[7:] == ["paired bootstrap", "FAIL"] and float(group[6]) < 0.01
    lenient = compare(baseline, candidate, "--paired", "--alpha", "0.3")
    assert status_of(lenient.stdout, "moe_rbench_sst2 / acc,none") == "FAIL"


def test_the_headline_says_which_drops_passed_only_by_the_test_or_the_standard_error(baseline, tmp_path):
    # three SST-2 documents turned wrong: 0.125 below the baseline, beyond the tolerance of 0.01
    candidate = tmp_path / "candidate"
    with_wrong_documents(baseline, candidate, {"moe_rbench_sst2": 3})
    paired = compare(baseline, candidate, "--paired")
    assert paired.returncode == 0 and status_of(paired.stdout, "moe_rbench_sst2 / acc,none") == "ok"  # p = 0.25
    assert headline(paired.stdout) == (
        "PASS: 12 baseline metrics, 12 compared by the paired test at alpha 0.05: 1 dropped by more than 0.01 but "
        "not significantly (p >= 0.05)"
    )
    edit_results(candidate, lambda results: results["results"]["moe_rbench_sst2"].update({"acc_stderr,none": 0.2}))
    lenient = compare(baseline, candidate, "--ignore_within_stderr")
    assert lenient.returncode == 0 and status_of(lenient.stdout, "moe_rbench_sst2 / acc,none") == "ok"
    assert headline(lenient.stdout) == (
        "PASS: 12 baseline metrics, 12 compared by the unpaired rule with --ignore_within_stderr: 1 dropped by more "
        "than 0.01 but within the combined standard error (--ignore_within_stderr)"
    )
    assert "unless it is within the combined standard error" in lenient.stdout  # the rule applied, stated
    strict = compare(baseline, candidate)
    assert strict.returncode == 1 and headline(strict.stdout) == (
        "FAIL: **1 of 12 metrics failed**; 12 compared by the unpaired rule: 1 worse by more than 0.01"
    )


def test_paired_without_samples_says_it_used_the_unpaired_rule(baseline, tmp_path):
    candidate = tmp_path / "candidate"
    shutil.copytree(baseline, candidate)
    for samples in candidate.rglob("samples_*.jsonl"):
        samples.unlink()
    result = compare(baseline, candidate, "--paired")
    assert result.returncode == 0
    assert "not both runs logged samples (--log_samples): the unpaired rule was used" in result.stdout
    assert row(result.stdout, "moe_rbench_sst2 / acc,none")[7] == "unpaired"
