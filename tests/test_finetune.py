"""`moe-rbench finetune`: the paper's two protocols and its MoE knobs, on tiny models, offline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import BIN, FIXTURE_DATA, evaluate_to, lm_eval_cli, lm_eval_outputs, run
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

from moe_rbench.finetune import (
    Recipe,
    TrainingRouting,
    classification_features,
    encode_pair,
    finetune,
    instruction_features,
)
from moe_rbench_models import MoEHFLM
from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing import find_moe_layers
from moe_rbench_tasks.training import instruction_examples

FAST = {"learning_rate": 1e-2, "logging_steps": 1, "lr_scheduler_type": "constant", "use_cpu": True}


def weights(path) -> dict[str, torch.Tensor]:
    return {
        name: parameter.detach() for name, parameter in AutoModelForCausalLM.from_pretrained(path).named_parameters()
    }


def router_names(path) -> set[str]:
    model = AutoModelForCausalLM.from_pretrained(path)
    return {f"{layer.name}.{name}" for layer in find_moe_layers(model) for name, _ in layer.router.named_parameters()}


def losses(result) -> list[float]:
    return [entry["loss"] for entry in result.log_history if "loss" in entry]


@pytest.mark.parametrize(
    "recipe",
    [
        Recipe("classify", "sst2"),
        Recipe("classify", "snli", head="causal_lm"),
        Recipe("instruct", head="causal_lm", safety_samples=2),
    ],
    ids=["classify-head", "classify-label-words", "instruct"],
)
def test_each_protocol_lowers_the_training_loss(tiny_model, tmp_path, recipe):
    """The same batch every step (all examples in one batch): the loss must fall."""
    result = finetune(
        tiny_model("mixtral"),
        tmp_path,
        recipe,
        FIXTURE_DATA,
        limit=8,
        max_steps=6,
        per_device_train_batch_size=8,
        **FAST,
    )
    curve = losses(result)
    assert len(curve) == 6 and curve[-1] < curve[0] - 0.05, curve
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["moe_rbench_recipe"]["protocol"] == recipe.protocol and (tmp_path / "tokenizer.json").exists()


def test_router_freeze_keeps_every_router_parameter_bit_identical(tiny_model, tmp_path):
    start = tiny_model("olmoe")
    finetune(
        start,
        tmp_path,
        Recipe("classify", "sst2", head="causal_lm", router="freeze"),
        FIXTURE_DATA,
        max_steps=3,
        **FAST,
    )
    before, after = weights(start), weights(tmp_path)
    routers = router_names(start)
    assert routers and all(torch.equal(before[name], after[name]) for name in routers)
    others = [name for name in before if name not in routers]
    assert sum(not torch.equal(before[name], after[name]) for name in others) > len(others) // 2


def test_bilevel_updates_the_backbone_then_only_the_routers(tiny_model, tmp_path):
    """K=2: steps 1-2 change everything but the routers, steps 3-4 the routers only (same seed, data and constant
    learning rate, so the first two steps of both runs are the same)."""
    start = tiny_model("mixtral")
    recipe = Recipe("classify", "sst2", head="causal_lm", bilevel=2)
    for steps in (2, 4):
        finetune(start, tmp_path / str(steps), recipe, FIXTURE_DATA, max_steps=steps, **FAST)
    initial, two, four = weights(start), weights(tmp_path / "2"), weights(tmp_path / "4")
    routers = router_names(start)
    backbone = [name for name in initial if name not in routers]
    assert all(torch.equal(initial[name], two[name]) for name in routers)  # backbone steps: routers rest
    assert all(not torch.equal(initial[name], two[name]) for name in backbone if "embed" in name or "proj" in name)
    assert all(not torch.equal(two[name], four[name]) for name in routers)  # router steps: only routers move
    assert all(torch.equal(two[name], four[name]) for name in backbone)


def batch(path, texts: list[str]) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = [{"input_ids": ids, "labels": ids} for ids in tokenizer(texts)["input_ids"]]
    return DataCollatorForSeq2Seq(tokenizer, padding=True)(features)


TEXTS = ["Given the sentences: a gorgeous film\n what is the sentiment", "contains no wit , only labored gags"]


def test_expert_dropout_changes_training_outputs_and_leaves_evaluation_alone(tiny_model):
    path = tiny_model("mixtral")
    model = AutoModelForCausalLM.from_pretrained(path)
    inputs = batch(path, TEXTS)
    model.eval()
    plain = model(**inputs).logits
    routing = TrainingRouting(model, find_moe_layers(model), Recipe("classify", "sst2", expert_dropout=0.5))
    try:
        assert torch.equal(model(**inputs).logits, plain)  # evaluation: no dropout
        model.train()
        torch.manual_seed(0)
        assert not torch.allclose(model(**inputs).logits, plain)
    finally:
        routing.remove()
    model.train()
    assert torch.allclose(model(**inputs).logits, plain)  # hooks gone; the model has no dropout of its own


@pytest.mark.equivalence
@pytest.mark.parametrize("architecture", ["mixtral", "qwen2_moe", "olmoe"])
def test_the_load_balancing_loss_is_the_one_the_model_reports(tiny_model, architecture):
    """What the hooks compute equals transformers' own aux_loss of the causal LM (its output_router_logits path)."""
    path = tiny_model(architecture)
    model = AutoModelForCausalLM.from_pretrained(path).train()
    inputs = batch(path, TEXTS)
    reference = model(**inputs, output_router_logits=True).aux_loss
    routing = TrainingRouting(model, find_moe_layers(model), Recipe("classify", "sst2", aux_loss_coef=0.1))
    try:
        model(**inputs)
        assert torch.allclose(routing.balancing_loss(inputs["attention_mask"]), reference)
    finally:
        routing.remove()


def test_the_aux_coefficient_adds_its_share_of_the_models_aux_loss_to_the_training_loss(tiny_model, tmp_path):
    path = tiny_model("mixtral")
    loss = {}
    for coef in (0.0, 0.1):
        recipe = Recipe("instruct", head="causal_lm", aux_loss_coef=coef)
        result = finetune(
            path, tmp_path / str(coef), recipe, FIXTURE_DATA, max_steps=1, per_device_train_batch_size=8, **FAST
        )
        loss[coef] = losses(result)[0]
    model = AutoModelForCausalLM.from_pretrained(path).train()
    tokenizer = AutoTokenizer.from_pretrained(path)

    features, _ = instruction_features(Recipe("instruct", head="causal_lm"), tokenizer, FIXTURE_DATA, None)
    inputs = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(features)
    with torch.no_grad():
        aux = model(**inputs, output_router_logits=True).aux_loss  # one batch of all five examples
    assert loss[0.1] - loss[0.0] == pytest.approx(0.1 * float(aux), rel=1e-4)


def test_the_safety_samples_removed_are_exactly_the_listed_ones():
    listed = json.loads((FIXTURE_DATA / "moe_rbench" / "alpaca_data_safety_only.json").read_text())
    alpaca = json.loads((FIXTURE_DATA / "alpaca" / "alpaca_data.json").read_text())
    examples, counts = instruction_examples(FIXTURE_DATA)
    kept = [row for row in alpaca if row not in listed]
    assert counts == {"alpaca": 8, "removed_as_safety_related": 3} and len(examples) == len(kept) == 5
    assert [response for _, response in examples] == [row["output"] for row in kept]
    with_input = next(prompt for prompt, _ in examples if "### Input:" in prompt)
    assert with_input.endswith("### Input:\nThe cat sleeps on the sofa.\n\n### Response:\n")
    mixed, counts = instruction_examples(FIXTURE_DATA, safety_samples=2)
    safety = json.loads((FIXTURE_DATA / "safety_tuned_llamas/training/safety_only_data_Instructions.json").read_text())
    assert [response for _, response in mixed[-2:]] == [row["output"] for row in safety[:2]]
    assert len(instruction_examples(FIXTURE_DATA, keep_safety_samples=True)[0]) == 8


def test_training_examples_are_what_lm_eval_asks(tiny_model, tmp_path):
    """SST-2 'training' rows that are the evaluation documents: the label-word examples are lm-eval's own
    context and continuation tokens (from its logged requests and its `_encode_pair`), the classifier examples
    the context as lm-eval's classifier scoring encodes it."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE_DATA / "decodingtrust", data / "decodingtrust")
    base = json.loads((data / "decodingtrust" / "style.json").read_text())["dev"]["base"][:5]
    (data / "sst2").mkdir()
    rows = "".join(f"{row['sentence']}\t{row['label']}\n" for row in base)
    (data / "sst2" / "train.tsv").write_text("sentence\tlabel\n" + rows)
    path = tiny_model("mixtral")
    out = tmp_path / "run"
    lm_eval_cli(
        f"pretrained={path}",
        "moe_rbench_sst2",
        "--limit",
        "5",
        "--log_samples",
        "--output_path",
        str(out),
        data_dir=data,
    )
    samples = sorted(lm_eval_outputs(out)[1]["moe_rbench_sst2"], key=lambda sample: sample["doc_id"])
    lm = MoEHFLM(pretrained=str(path), device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    label_words, _ = classification_features(Recipe("classify", "sst2", head="causal_lm"), tokenizer, data, None)
    heads, _ = classification_features(Recipe("classify", "sst2"), tokenizer, data, None)
    for sample, word, head in zip(samples, label_words, heads, strict=True):
        target = int(sample["target"])
        request = sample["arguments"][f"gen_args_{target}"]
        context, continuation = request["arg_0"], request["arg_1"]
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        assert word["input_ids"] == context_ids + continuation_ids
        assert word["labels"] == [-100] * len(context_ids) + continuation_ids
        assert encode_pair(tokenizer, context, continuation) == (context_ids, continuation_ids)
        assert head["input_ids"] == lm.tok_batch_encode([context])[0][0].tolist() and head["labels"] == target


def test_a_finetuned_classifier_runs_through_the_stock_lm_eval_with_its_recipe(tiny_model, tmp_path):
    checkpoint = tmp_path / "classifier"
    command = [str(BIN / "moe-rbench"), "finetune", str(tiny_model("mixtral")), str(checkpoint), "--protocol"]
    options = ["--router", "freeze", "--max_steps", "2", "--data_dir", str(FIXTURE_DATA), "--training_args"]
    result = run([*command, "classify", "--dataset", "sst2", *options, "use_cpu=true", "logging_steps=1"])
    assert "recipe: classify:sst2 (router=freeze)" in result.stdout and str(checkpoint) in result.stdout
    out = tmp_path / "eval"
    args = f"pretrained={checkpoint},head=sequence_classification"
    lm_eval_cli(args, "moe_rbench_ood", "--limit", "10", "--output_path", str(out))
    results, _ = lm_eval_outputs(out)
    recipe = results["config"]["moe"]["recipe"]
    assert recipe["label"] == "classify:sst2 (router=freeze)" and recipe["data"]["labels"] == ["negative", "positive"]
    assert 0 <= results["results"]["moe_rbench_sst2"]["acc,none"] <= 1
    report = run([str(BIN / "moe-rbench"), "report", str(out), "--out", str(tmp_path / "report")])
    assert "[classify:sst2 (router=freeze)]" in (tmp_path / "report" / "report.md").read_text(), report.stdout


def test_finetune_runs_under_accelerate_launch(tiny_model, tmp_path):
    command = [str(BIN / "accelerate"), "launch", "--num_processes", "1", "--cpu", "-m", "moe_rbench.cli", "finetune"]
    options = ["--protocol", "instruct", "--max_steps", "2", "--data_dir", str(FIXTURE_DATA)]
    result = run([*command, str(tiny_model("qwen2_moe")), str(tmp_path / "out"), *options, "--expert_dropout", "0.1"])
    assert "recipe: instruct:alpaca (expert_dropout=0.1)" in result.stdout
    assert json.loads((tmp_path / "out" / "config.json").read_text())["moe_rbench_recipe"]["expert_dropout"] == 0.1


@pytest.mark.parametrize(
    ("architecture", "options", "message"),
    [
        ("llama", ["--router", "freeze"], "--router needs a Mixture-of-Experts model; LlamaForSequenceClassification"),
        ("mixtral", ["--router", "frozen"], "argument --router: invalid choice: 'frozen'"),
        ("deepseek_v3", ["--aux_loss_coef", "0.1"], "defines no load_balancing_loss_func"),
    ],
)
def test_bad_options_stop_the_command_before_training(tiny_model, tmp_path, architecture, options, message):
    command = [str(BIN / "moe-rbench"), "finetune", str(tiny_model(architecture)), str(tmp_path / "out")]
    result = run([*command, "--protocol", "classify", "--dataset", "sst2", *options], check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bilevel": 0}, "K must be at least 1 (got 0)"),
        ({"bilevel": 2, "router": "freeze"}, "and the routers not frozen"),
        ({"expert_dropout": 1.0}, "--expert_dropout P must be in [0, 1), got 1.0"),
        ({"aux_loss_coef": -1.0}, "--aux_loss_coef must be 0 or more"),
        ({"dataset": "sst3"}, "--protocol classify needs --dataset, one of sst2, snli"),
        ({"safety_samples": 3}, "--keep_safety_samples and --safety_samples belong to --protocol instruct"),
    ],
)
def test_bad_recipes_are_refused_with_the_fix(options, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        Recipe(**{"protocol": "classify", "dataset": "sst2", **options})


@pytest.mark.parametrize(
    ("architecture", "options", "message"),
    [
        ("llama", {"expert_dropout": 0.1, "top_k": 1}, "--expert_dropout, --top_k need a Mixture-of-Experts model"),
        ("mixtral", {"top_k": 5}, "--top_k 5: layers decoder.0, decoder.1 have fewer experts"),
        # 8 experts, but grouped routing keeps 1 group of 4
        ("deepseek_v3", {"top_k": 5}, "--top_k 5: layers decoder.0, decoder.1 have fewer experts to route a token to"),
    ],
)
def test_knobs_the_model_cannot_take_are_refused_before_any_data_is_read(
    tiny_model, tmp_path, architecture, options, message
):
    recipe = Recipe("classify", "sst2", **options)
    with pytest.raises(OptionError, match=re.escape(message)):
        finetune(tiny_model(architecture), tmp_path / "out", recipe, data_dir=tmp_path / "no data here")
    assert not (tmp_path / "out").exists()


def test_instruct_refuses_a_dataset_and_an_encoder_decoder_model(tiny_model, tmp_path):
    with pytest.raises(OptionError, match="--protocol instruct trains on Alpaca"):
        Recipe("instruct", "sst2", head="causal_lm")
    with pytest.raises(OptionError, match="encoder-decoder model"):
        finetune(tiny_model("switch_transformers"), tmp_path, Recipe("instruct", head="causal_lm"), FIXTURE_DATA)


@pytest.mark.parametrize("name", ["moe", "dense"])
def test_the_demo_models_are_real_classifiers(name, tmp_path):
    """The committed demo checkpoints load with today's libraries and are real classifiers on the demo's SST-2."""
    demo = Path(__file__).parents[1] / "demo"
    lm = MoEHFLM(pretrained=str(demo / "models" / name), device="cpu", batch_size=64)
    results = evaluate_to(tmp_path, lm, ["moe_rbench_sst2"], data_dir=demo / "data")
    assert results["results"]["moe_rbench_sst2"]["acc,none"] >= 0.70
