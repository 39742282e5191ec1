"""The stock `lm_eval` command and `moe-rbench run`, each in a fresh interpreter, as a user types them."""

from __future__ import annotations

import site
import statistics
import sys
from pathlib import Path

import pytest

import moe_rbench_tasks
from conftest import BIN, FIXTURE_DATA, STYLE_OOD_TASKS, lm_eval_outputs, run

LIMIT = 5


@pytest.fixture(scope="module")
def style_ood_runs(tiny_model, tmp_path_factory):
    """`lm_eval --tasks moe_rbench_ood --log_samples` with `moe_hf` and with `hf` on the same tiny Mixtral."""
    outputs = {}
    for model in ("moe_hf", "hf"):
        output_path = tmp_path_factory.mktemp(f"run_{model}")
        run([str(BIN / "lm_eval"), "--model", model,
             "--model_args", f"pretrained={tiny_model('mixtral')}",
             "--metadata", f'{{"data_dir": "{FIXTURE_DATA}"}}',
             "--tasks", "moe_rbench_ood", "--limit", str(LIMIT), "--batch_size", "4", "--device", "cpu",
             "--log_samples", "--output_path", str(output_path)])  # fmt: skip
        outputs[model] = lm_eval_outputs(output_path)
    return outputs


def test_results_json_has_the_group_its_11_subtasks_and_the_aggregates(style_ood_runs):
    results, samples = style_ood_runs["moe_hf"]
    assert set(results["group_subtasks"]["moe_rbench_ood"]) == set(STYLE_OOD_TASKS)
    assert set(samples) == set(STYLE_OOD_TASKS)
    for task in STYLE_OOD_TASKS:
        assert results["n-samples"][task] == {"original": 24, "effective": LIMIT}
        assert len(samples[task]) == LIMIT
    group = results["groups"]["moe_rbench_ood"]
    style_accuracies = [results["results"][task]["acc,none"] for task in STYLE_OOD_TASKS[1:]]
    assert group["id_acc,none"] == results["results"]["moe_rbench_sst2"]["acc,none"]
    assert group["ood_acc,none"] == pytest.approx(statistics.mean(style_accuracies))


def test_results_config_describes_the_moe_architecture(style_ood_runs):
    moe = style_ood_runs["moe_hf"][0]["config"]["moe"]
    assert moe == {"architecture": "MixtralForCausalLM", "model_type": "mixtral", "moe_layers": 2,
                   "experts_per_layer": 4, "top_k": 2}  # fmt: skip


def test_moe_hf_and_hf_give_identical_per_sample_loglikelihoods(style_ood_runs):
    (_, moe_samples), (_, hf_samples) = style_ood_runs["moe_hf"], style_ood_runs["hf"]
    for task in STYLE_OOD_TASKS:
        moe_by_doc = {sample["doc_id"]: sample["resps"] for sample in moe_samples[task]}
        hf_by_doc = {sample["doc_id"]: sample["resps"] for sample in hf_samples[task]}
        assert moe_by_doc == hf_by_doc and len(moe_by_doc) == LIMIT


def test_prompt_and_label_words_are_the_papers(style_ood_runs):
    _, samples = style_ood_runs["moe_hf"]
    sample = samples["moe_rbench_style_shake_p0"][0]
    assert sample["arguments"]["gen_args_0"]["arg_0"] == f"Given the sentences: {sample['doc']['sentence']}\n what is the sentiment of this sentence ? "
    assert [args["arg_1"] for args in sample["arguments"].values()] == ["negative", "positive"]
    assert sample["doc"]["style"] == "shake_p0" and isinstance(sample["doc"]["id"], int)


def test_disabled_start_up_hook_gives_an_error_that_points_to_moe_rbench_run(tiny_model):
    # a built-in task, because lm-eval resolves task names before the model (ours are off too)
    result = run([str(BIN / "lm_eval"), "--model", "moe_hf", "--model_args", f"pretrained={tiny_model('mixtral')}",
                  "--tasks", "hellaswag", "--limit", "2", "--device", "cpu"],
                 env={"MOE_RBENCH_STARTUP_HOOK": "0"}, check=False)  # fmt: skip
    assert result.returncode != 0
    assert "moe-rbench run" in result.stderr and "MOE_RBENCH_STARTUP_HOOK=0" in result.stderr


def _site_packages_without_start_up_files() -> str:
    """PYTHONPATH that makes this environment importable under `python -S`: `.pth` files are not read."""
    return ":".join([*site.getsitepackages(), str(Path(moe_rbench_tasks.__file__).parents[1])])


def test_moe_rbench_run_works_where_the_start_up_hook_is_inactive(tiny_model, tmp_path):
    env = {"PYTHONPATH": _site_packages_without_start_up_files(), "MOE_RBENCH_DATA_DIR": str(FIXTURE_DATA)}
    probe = "import lm_eval.models, lm_eval.api.registry as r; print('moe_hf' in r.model_registry)"
    assert run([sys.executable, "-S", "-c", probe], env=env).stdout.strip() == "False"  # hook inactive

    run([sys.executable, "-S", "-m", "moe_rbench_tasks.cli", "run", "--model", "moe_hf",
         "--model_args", f"pretrained={tiny_model('llama')}", "--tasks", "moe_rbench_sst2",
         "--limit", "3", "--device", "cpu", "--output_path", str(tmp_path)], env=env)  # fmt: skip
    results, _ = lm_eval_outputs(tmp_path)
    assert results["n-samples"]["moe_rbench_sst2"]["effective"] == 3
    assert results["config"]["moe"]["moe_layers"] == 0
