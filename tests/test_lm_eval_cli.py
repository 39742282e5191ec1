"""The stock `lm_eval` command and `moe-rbench run`, each in a fresh interpreter, as a user types them (and, for
comparison, the same evaluations through the Python API)."""

from __future__ import annotations

import json
import site
import statistics
import sys
from pathlib import Path

import pytest
from helpers import BIN, FIXTURE_DATA, STYLE_OOD_TASKS, evaluate_to, lm_eval_cli, lm_eval_outputs, run

import moe_rbench_tasks
from moe_rbench_models.routing import load_records

LIMIT = 5


@pytest.fixture(scope="module")
def style_ood_runs(tiny_model, tmp_path_factory):
    """`moe_rbench_ood --log_samples` on the same tiny Qwen2-MoE: `lm_eval --model moe_hf` recording routing
    (the stock command, in a fresh interpreter), and, in-process through the Python API, `hf` and `moe_hf`
    rerouting around expert 0 (results, samples and routing directory each)."""
    from lm_eval.models.huggingface import HFLM

    from moe_rbench_models import MoEHFLM

    model = str(tiny_model("qwen2_moe"))
    outputs = {}
    path = tmp_path_factory.mktemp("run_moe_hf")
    options = ["--limit", str(LIMIT), "--batch_size", "4", "--log_samples", "--output_path", str(path / "results")]
    lm_eval_cli(f"pretrained={model},routing_out={path / 'routing'}", "moe_rbench_ood", *options)
    outputs["moe_hf"] = (*lm_eval_outputs(path / "results"), path / "routing")
    for name, lm in {
        "hf": lambda routing: HFLM(pretrained=model, device="cpu", batch_size=4),
        "reroute": lambda routing: MoEHFLM(
            pretrained=model,
            device="cpu",
            batch_size=4,
            routing_out=str(routing),
            disable_experts="*:0",
            disable_mode="reroute",
        ),
    }.items():
        path = tmp_path_factory.mktemp(f"run_{name}")
        evaluate_to(path / "results", lm(path / "routing"), ["moe_rbench_ood"], limit=LIMIT)
        outputs[name] = (*lm_eval_outputs(path / "results"), path / "routing")
    return outputs


def test_results_json_has_the_group_its_11_subtasks_and_the_aggregates(style_ood_runs):
    results, samples, _ = style_ood_runs["moe_hf"]
    assert results["group_subtasks"]["moe_rbench_ood"] == ["moe_rbench_sst2", "moe_rbench_ood_styles"]
    assert set(results["group_subtasks"]["moe_rbench_ood_styles"]) == set(STYLE_OOD_TASKS[1:])
    assert set(samples) == set(STYLE_OOD_TASKS)
    for task in STYLE_OOD_TASKS:
        assert results["n-samples"][task] == {"original": 24, "effective": LIMIT}
        assert len(samples[task]) == LIMIT
    style_accuracies = [results["results"][task]["acc,none"] for task in STYLE_OOD_TASKS[1:]]
    assert results["groups"]["moe_rbench_ood_styles"]["acc,none"] == pytest.approx(statistics.mean(style_accuracies))


def test_results_config_describes_the_moe_architecture_and_routing(style_ood_runs):
    moe = style_ood_runs["moe_hf"][0]["config"]["moe"]
    assert {key: moe[key] for key in ("architecture", "model_type", "moe_layers", "experts_per_layer", "top_k")} == {
        "architecture": "Qwen2MoeForCausalLM",
        "model_type": "qwen2_moe",
        "moe_layers": 2,
        "experts_per_layer": 4,
        "top_k": 2,
    }
    assert set(moe["routing"]["summary"]) == set(STYLE_OOD_TASKS)
    assert set(moe["routing"]["summary"]["moe_rbench_sst2"]["decoder.1"]) == {
        "load",
        "load_entropy",
        "load_cv",
        "capacity_drop_rate",
        "tokens",
    }
    rerouted = style_ood_runs["reroute"][0]["config"]["moe"]["interventions"]
    assert rerouted["per_layer"] == {
        "decoder.0": {"top_k": None, "disabled": [0], "forced": []},
        "decoder.1": {"top_k": None, "disabled": [0], "forced": []},
    }


def test_moe_hf_and_hf_give_identical_per_sample_loglikelihoods(style_ood_runs):
    """moe_hf here also records routing: recording changes no score."""
    (_, moe_samples, _), (_, hf_samples, _) = style_ood_runs["moe_hf"], style_ood_runs["hf"]
    for task in STYLE_OOD_TASKS:
        moe_by_doc = {sample["doc_id"]: sample["resps"] for sample in moe_samples[task]}
        hf_by_doc = {sample["doc_id"]: sample["resps"] for sample in hf_samples[task]}
        assert moe_by_doc == hf_by_doc and len(moe_by_doc) == LIMIT


def test_prompt_and_label_words_are_the_papers(style_ood_runs):
    _, samples, _ = style_ood_runs["moe_hf"]
    sample = samples["moe_rbench_style_shake_p0"][0]
    assert (
        sample["arguments"]["gen_args_0"]["arg_0"]
        == f"Given the sentences: {sample['doc']['sentence']}\n what is the sentiment of this sentence ? "
    )
    assert [args["arg_1"] for args in sample["arguments"].values()] == ["negative", "positive"]
    assert sample["doc"]["style"] == "shake_p0" and isinstance(sample["doc"]["id"], int)


def test_routing_records_join_every_request_of_the_samples_files(style_ood_runs):
    _, samples, routing_dir = style_ood_runs["moe_hf"]
    records = {(r.task, r.doc_id, r.request_index): r for r in load_records(routing_dir)}
    requests = {
        (task, sample["doc_id"], index)
        for task, task_samples in samples.items()
        for sample in task_samples
        for index in range(len(sample["arguments"]))
    }
    assert requests == set(records) and len(requests) == 11 * LIMIT * 2
    for record in records.values():
        assert record.request_type == "loglikelihood" and len(record.continuation_tokens) > 0
        assert all(
            layer.continuation_ids.shape == (len(record.continuation_tokens), 2) for layer in record.layers.values()
        )


def test_rerouting_around_expert_0_removes_it_from_every_record(style_ood_runs):
    records = list(load_records(style_ood_runs["reroute"][2]))
    assert len(records) == 11 * LIMIT * 2
    for record in records:
        for layer in record.layers.values():
            assert 0 not in layer.context_ids and 0 not in layer.continuation_ids
    baseline = {(r.task, r.doc_id, r.request_index): r for r in load_records(style_ood_runs["moe_hf"][2])}
    assert any(0 in layer.context_ids for record in baseline.values() for layer in record.layers.values())


def test_moe_rbench_trace_writes_the_table_and_the_heatmap(style_ood_runs, tmp_path):
    routing_dir = style_ood_runs["moe_hf"][2]
    written = run(
        [
            str(BIN / "moe-rbench"),
            "trace",
            "--routing",
            str(routing_dir),
            "--id",
            "moe_rbench_sst2",
            "--ood",
            "moe_rbench_style_*",
            "--out",
            str(tmp_path),
        ]
    ).stdout.split()
    assert written == [str(tmp_path / name) for name in ("trace.md", "trace.csv", "trace.json", "trace.png")]
    rows = json.loads((tmp_path / "trace.json").read_text())["rows"]
    assert {(row["ood_task"], row["layer"]) for row in rows} == {
        (task, layer) for task in STYLE_OOD_TASKS[1:] for layer in ("decoder.0", "decoder.1")
    }
    assert all(0 <= row["distribution_l1"] <= 2 and row["pairs"] == LIMIT for row in rows)
    assert (tmp_path / "trace.png").stat().st_size > 10_000


@pytest.mark.parametrize(("model", "task"), [("moe_hf", "hellaswag"), ("hf", "moe_rbench_ood")])
def test_disabled_start_up_hook_gives_an_error_that_points_to_moe_rbench_run(tiny_model, model, task):
    # our model with a built-in task, and a built-in model with our task: each names `moe-rbench run`
    result = run(
        [
            str(BIN / "lm_eval"),
            "--model",
            model,
            "--model_args",
            f"pretrained={tiny_model('mixtral')}",
            "--tasks",
            task,
            "--limit",
            "2",
            "--device",
            "cpu",
        ],
        env={"MOE_RBENCH_STARTUP_HOOK": "0"},
        check=False,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "moe-rbench run" in last and "MOE_RBENCH_STARTUP_HOOK=0" in last


def _site_packages_without_start_up_files() -> str:
    """PYTHONPATH that makes this environment importable under `python -S`: `.pth` files are not read."""
    return ":".join([*site.getsitepackages(), str(Path(moe_rbench_tasks.__file__).parents[1])])


def test_moe_rbench_run_works_where_the_start_up_hook_is_inactive(tiny_model, tmp_path):
    env = {"PYTHONPATH": _site_packages_without_start_up_files(), "MOE_RBENCH_DATA_DIR": str(FIXTURE_DATA)}
    probe = "import lm_eval.models, lm_eval.api.registry as r; print('moe_hf' in r.model_registry)"
    assert run([sys.executable, "-S", "-c", probe], env=env).stdout.strip() == "False"  # hook inactive

    run(
        [
            sys.executable,
            "-S",
            "-m",
            "moe_rbench.cli",
            "run",
            "--model",
            "moe_hf",
            "--model_args",
            f"pretrained={tiny_model('llama')}",
            "--tasks",
            "moe_rbench_sst2",
            "--limit",
            "3",
            "--device",
            "cpu",
            "--output_path",
            str(tmp_path),
        ],
        env=env,
    )
    results, _ = lm_eval_outputs(tmp_path)
    assert results["n-samples"]["moe_rbench_sst2"]["effective"] == 3
    assert results["config"]["moe"]["moe_layers"] == 0
