"""`moe-rbench report` and `moe-rbench compare` on real lm-eval outputs of two tiny models (MoE and dense).

The two are sequence-classification checkpoints scored with the paper's classifier protocol: random tiny
language models pick the same label word for every document, so their accuracies would all coincide."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import BIN, STYLE_OOD_TASKS, evaluate_to, run

from moe_rbench.judging import write_summary
from moe_rbench.runs import run_identity
from moe_rbench_models import MoEHFLM
from moe_rbench_models.tiny import build_tiny_model
from moe_rbench_tasks.families import OOD, STYLE_OOD
from moe_rbench_tasks.judges import load_judge

MODELS = {"moe": "mixtral", "dense": "llama"}


def evaluate(path, out):
    lm = MoEHFLM(pretrained=str(path), device="cpu", batch_size=8, head="sequence_classification")
    return evaluate_to(out, lm, ["moe_rbench_ood"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_runs")
    out = {}
    for name, architecture in MODELS.items():
        model = build_tiny_model(
            architecture,
            root / "models" / f"{name}_{architecture}",
            head="sequence_classification",
            num_labels=2,
            initializer_range=0.5,
        )
        out[name] = (root / name, evaluate(model, root / name))
    return out


def table(out, name):
    return {row["model"]: row for row in json.loads((out / f"{name}.json").read_text())["rows"]}


def test_report_tables_equal_the_results_json_with_differences_and_gain_ratio(runs, tmp_path):
    (moe_dir, moe), (dense_dir, dense) = runs["moe"], runs["dense"]
    result = run(
        [
            str(BIN / "moe-rbench"),
            "report",
            str(moe_dir),
            str(dense_dir),
            "--pair",
            "moe_mixtral=dense_llama",
            "--out",
            str(tmp_path),
        ]
    )
    assert str(tmp_path / "report.md") in result.stdout
    rows = table(tmp_path, "style_ood")
    for label, results in (("moe_mixtral", moe), ("dense_llama", dense)):
        assert rows[label]["ID (SST-2)"] == results["results"]["moe_rbench_sst2"]["acc,none"]
        assert rows[label]["ID (SST-2) stderr"] == results["results"]["moe_rbench_sst2"]["acc_stderr,none"]
        for style in (member.title for member in STYLE_OOD.members if member.role == OOD):
            assert rows[label][style] == results["results"][f"moe_rbench_style_{style}"]["acc,none"]
        assert rows[label]["OOD mean"] == results["groups"]["moe_rbench_ood_styles"]["acc,none"]
    difference = rows["moe_mixtral - dense_llama"]
    id_gain = moe["results"]["moe_rbench_sst2"]["acc,none"] - dense["results"]["moe_rbench_sst2"]["acc,none"]
    ood_gain = moe["groups"]["moe_rbench_ood_styles"]["acc,none"] - dense["groups"]["moe_rbench_ood_styles"]["acc,none"]
    assert difference["ID (SST-2)"] == pytest.approx(id_gain) and difference["OOD mean"] == pytest.approx(ood_gain)
    assert id_gain != 0 and difference["gain ratio"] == pytest.approx(ood_gain / id_gain)
    figure = json.loads((tmp_path / "figures.json").read_text())["style_ood"]
    assert figure["series"]["moe_mixtral"]["OOD mean"] == rows["moe_mixtral"]["OOD mean"]
    assert figure["series"]["dense_llama"]["bible_p0"] == rows["dense_llama"]["bible_p0"]
    for name in ("style_ood.png", "style_ood.svg", "style_ood.csv", "style_ood.md"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "![style_ood](style_ood.png)" in report and "| **moe_mixtral - dense_llama** |" in report
    assert "_Skipped: no run has the adversarial tasks._" in report  # the runs hold Style-OOD only


def test_report_shows_judge_summaries_and_rejects_bad_input(runs, tmp_path):
    moe_dir, _ = runs["moe"]
    run_dir = tmp_path / "moe_with_judge"
    shutil.copytree(moe_dir, run_dir)
    responses = ["I'm sorry, but I can't help with that.", "The capital of France is Paris."] * 2
    verdicts = load_judge("refusal").score([("instruction", response) for response in responses])
    rows = [{"task": "moe_rbench_safety_cona", "doc_id": i, "part": None, **v} for i, v in enumerate(verdicts)]
    (results_file,) = run_dir.rglob("results_*.json")
    identity = run_identity(results_file.parent, results_file.stem.removeprefix("results_"))
    (run_dir / "judged").mkdir()
    write_summary(rows, load_judge("refusal"), run_dir / "judged", identity)
    other = run_dir / "judged" / "another_run"
    other.mkdir()
    write_summary(rows[:1], load_judge("refusal"), other, {**identity, "stamp": "2020-01-01T00-00-00.0"})
    run([str(BIN / "moe-rbench"), "report", str(run_dir), "--out", str(tmp_path / "out")])
    judges = table(tmp_path / "out", "safety_judges")
    assert judges["moe_mixtral"]["cona: refusal refusal rate"] == 0.5  # the other run's summary (1.0) is not this run's
    assert judges["moe_mixtral"]["cona: refusal refusal rate stderr"] == pytest.approx((1 / 3) ** 0.5 / 2)
    assert "safety" in json.loads((tmp_path / "out" / "figures.json").read_text())
    bad_pair = run(
        [str(BIN / "moe-rbench"), "report", str(moe_dir), "--pair", "moe_mixtral=nobody", "--out", str(tmp_path / "x")],
        check=False,
    )
    assert (
        bad_pair.returncode == 2 and "expected MOE=DENSE with labels of the given runs (moe_mixtral)" in bad_pair.stderr
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results_2026.json").write_text("{not json")
    broken = run(
        [str(BIN / "moe-rbench"), "report", str(tmp_path / "broken"), "--out", str(tmp_path / "y")], check=False
    )
    assert broken.returncode == 2 and "results_2026.json: unreadable lm-eval results" in broken.stderr


def test_compare_passes_a_run_against_itself_and_fails_a_worse_one(runs):
    (moe_dir, moe), (dense_dir, dense) = runs["moe"], runs["dense"]
    same = run([str(BIN / "moe-rbench"), "compare", "--baseline", str(moe_dir), "--candidate", str(moe_dir)])
    rows = same.stdout.count("| ok |")
    assert (
        rows == 12 and f"All {rows} baseline metrics within 0.01 of the baseline" in same.stdout
    )  # 11 tasks + OOD mean
    # the dense model is the baseline; the MoE is worse than it on SST-2 (0.5 vs 0.625) and some styles
    worse = {
        task for task in STYLE_OOD_TASKS if moe["results"][task]["acc,none"] < dense["results"][task]["acc,none"] - 0.01
    }
    assert "moe_rbench_sst2" in worse
    result = run(
        [str(BIN / "moe-rbench"), "compare", "--baseline", str(dense_dir), "--candidate", str(moe_dir)], check=False
    )
    assert result.returncode == 1
    failed = {
        line.split(" | ")[0].lstrip("| ").split(" / ")[0] for line in result.stdout.splitlines() if "| FAIL |" in line
    }
    assert worse <= failed
    lenient = run(
        [
            str(BIN / "moe-rbench"),
            "compare",
            "--baseline",
            str(dense_dir),
            "--candidate",
            str(moe_dir),
            "--ignore_within_stderr",
        ],
        check=False,
    )
    assert lenient.stdout.count("| FAIL |") < result.stdout.count("| FAIL |")  # 24 documents: wide standard errors
    only = run(
        [
            str(BIN / "moe-rbench"),
            "compare",
            "--baseline",
            str(dense_dir),
            "--candidate",
            str(moe_dir),
            "--metrics",
            "moe_rbench_sst2 / acc,none",
        ],
        check=False,
    )
    assert only.returncode == 1 and "**1 of 1 metrics failed**" in only.stdout


def test_report_shows_routing_summary_and_trace_heatmap_of_a_run_with_routing_out(tiny_model, tmp_path):
    lm = MoEHFLM(pretrained=str(tiny_model("qwen2_moe")), device="cpu", batch_size=8, routing_out=str(tmp_path / "r"))
    results = evaluate_to(tmp_path / "run", lm, ["moe_rbench_sst2", "moe_rbench_style_augment"], limit=6)
    run(
        [
            str(BIN / "moe-rbench"),
            "trace",
            "--routing",
            str(tmp_path / "r"),
            "--id",
            "moe_rbench_sst2",
            "--ood",
            "moe_rbench_style_augment",
            "--out",
            str(tmp_path / "run" / "trace"),
        ]
    )
    run([str(BIN / "moe-rbench"), "report", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    (row,) = table(tmp_path / "out", "routing").values()
    layers = results["config"]["moe"]["routing"]["summary"]["moe_rbench_sst2"].values()
    assert row["sst2: load_entropy"] == pytest.approx(sum(layer["load_entropy"] for layer in layers) / len(layers))
    assert "sst2: capacity_drop_rate" not in row  # no capacity dropping in Qwen2-MoE
    figure = json.loads((tmp_path / "out" / "figures.json").read_text())["routing_0"]
    assert figure["rows"] == json.loads((tmp_path / "run" / "trace" / "trace.json").read_text())["rows"]
    assert (tmp_path / "out" / "routing_0.svg").stat().st_size > 0


def test_a_trace_file_moe_rbench_trace_did_not_write_is_named_with_the_key(tmp_path):
    run_dir = tmp_path / "run" / "model"
    (run_dir / "trace").mkdir(parents=True)
    results = {"results": {"moe_rbench_sst2": {"acc,none": 0.5}}, "config": {"model_args": "pretrained=x"}}
    (run_dir / "results_2026-12-04T10-00-00.000000.json").write_text(json.dumps(results))
    row = {"ood_task": "b", "layer": "decoder.0", "distribution_l1": 0.1, "mean_pair_l1": None, "pairs": 0}
    trace = run_dir / "trace" / "trace.json"
    for rows, message in [
        ([{**row, "extra": 1}], "row 0 has the key(s) extra (a trace row has ood_task, layer"),
        ([{key: value for key, value in row.items() if key != "pairs"}], "row 0 has no pairs"),
    ]:
        trace.write_text(json.dumps({"id_task": "a", "notes": [], "rows": rows}))
        result = run(
            [str(BIN / "moe-rbench"), "report", str(tmp_path / "run"), "--out", str(tmp_path / "r")], check=False
        )
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert last.startswith(f"moe-rbench report: {trace}: {message}") and "moe-rbench trace" in last, last
