"""`moe-rbench finetune`: MoE-RBench's protocols and MoE knobs, on tiny models, offline, each checked against an
independent computation of what the reference (UNITES-Lab/MoE-RBench @b110cc5) computes."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
from helpers import BIN, CAUSAL_MOE, FIXTURE_DATA, evaluate_to, lm_eval_cli, lm_eval_outputs, run
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

from moe_rbench.finetune import Recipe, TrainingRouting, finetune
from moe_rbench.finetune_data import classification_features, encode_pair, instruction_features
from moe_rbench.finetune_presets import PRESETS
from moe_rbench.finetune_trainer import Optimization
from moe_rbench_models import MoEHFLM
from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing import find_moe_layers
from moe_rbench_models.tiny import build_tiny_model
from moe_rbench_tasks.training import classification_docs, instruction_examples

CPU = {"logging_steps": 1, "use_cpu": True}
FAST = Optimization(learning_rate=1e-2, batch_size=8, gamma=1.0)  # a constant rate, the reference optimizer
SCRIPTS = Path(__file__).parent / "fixtures" / "reference_scripts"


def weights(path) -> dict[str, torch.Tensor]:
    return {
        name: parameter.detach() for name, parameter in AutoModelForCausalLM.from_pretrained(path).named_parameters()
    }


def losses(result) -> list[float]:
    return [entry["loss"] for entry in result.log_history if "loss" in entry]


def rates(result) -> list[float]:
    return [entry["learning_rate"] for entry in result.log_history if "loss" in entry]


@pytest.mark.parametrize(
    "recipe",
    [
        Recipe("classify", "sst2"),
        Recipe("classify", "snli", head="causal_lm"),
        Recipe("instruct", head="causal_lm", safety_samples=2, alpaca_holdout=0),
    ],
    ids=["classify-head", "classify-label-words", "instruct"],
)
def test_each_protocol_lowers_the_training_loss(tiny_model, tmp_path, recipe):
    """The same batch every step (all examples in one batch): the loss must fall."""
    result = finetune(tiny_model("mixtral"), tmp_path, recipe, FIXTURE_DATA, 8, FAST, max_steps=6, **CPU)
    curve = losses(result)
    assert len(curve) == 6 and curve[-1] < curve[0] - 0.05, curve
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["moe_rbench_recipe"]["protocol"] == recipe.protocol and (tmp_path / "tokenizer.json").exists()


# -- 1. the load-balancing term, exactly once ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixtral_with_own_aux(tmp_path_factory):
    """Tiny Mixtral checkpoints whose config asks for the model's own aux loss (router_aux_loss_coef 0.02) or not."""
    root = tmp_path_factory.mktemp("aux")
    return {
        flag: build_tiny_model("mixtral", root / str(flag), output_router_logits=flag, router_aux_loss_coef=0.02)
        for flag in (True, False)
    }


def independent_first_loss(path, coef: float) -> float:
    """Task loss + coef x Mixtral's load_balancing_loss_func on router logits captured here, on the one batch of the
    five instruction examples (the model's own term off)."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    model = AutoModelForCausalLM.from_pretrained(path, output_router_logits=False).train()
    tokenizer = AutoTokenizer.from_pretrained(path)
    recipe = Recipe("instruct", head="causal_lm", prompt_format="alpaca", alpaca_holdout=0)
    features, _ = instruction_features(recipe, tokenizer, FIXTURE_DATA, None)
    inputs = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(features)
    logits = []
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda m, a, out: logits.append(out[0])) for layer in model.model.layers
    ]
    with torch.no_grad():
        task = model(**inputs).loss
    for hook in hooks:
        hook.remove()
    aux = load_balancing_loss_func(tuple(logits), 4, 2, inputs["attention_mask"])
    return float(task + coef * aux)


@pytest.mark.parametrize("coef", [0.0, 0.5])
def test_the_balancing_term_is_added_once_whatever_the_checkpoint_config_says(mixtral_with_own_aux, tmp_path, coef):
    """Before: a config with output_router_logits=true added 0.02 x aux on top of C x aux (first-step loss 6.9288
    instead of 6.8888 for C=0.5), and C=0 kept the model's own term."""
    recipe = Recipe("instruct", head="causal_lm", prompt_format="alpaca", alpaca_holdout=0, aux_loss_coef=coef)
    first = {}
    for flag, path in mixtral_with_own_aux.items():
        result = finetune(path, tmp_path / str(flag), recipe, FIXTURE_DATA, None, FAST, max_steps=1, **CPU)
        first[flag] = losses(result)[0]
        saved = json.loads((tmp_path / str(flag) / "config.json").read_text())
        assert saved["output_router_logits"] is flag and saved["moe_rbench_recipe"]["aux_loss_coef"] == coef
    expected = independent_first_loss(mixtral_with_own_aux[False], coef)
    assert first[True] == pytest.approx(expected, rel=1e-5) and first[False] == pytest.approx(expected, rel=1e-5)


@pytest.mark.equivalence
@pytest.mark.parametrize("architecture", ["mixtral", "qwen2_moe", "olmoe"])
def test_the_load_balancing_loss_is_the_one_the_model_reports(tiny_model, architecture):
    """What the hooks compute equals transformers' own aux_loss of the causal LM (its output_router_logits path)."""
    path = tiny_model(architecture)
    model = AutoModelForCausalLM.from_pretrained(path).train()
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = [{"input_ids": ids, "labels": ids} for ids in tokenizer(TEXTS)["input_ids"]]
    inputs = DataCollatorForSeq2Seq(tokenizer, padding=True)(features)
    reference = model(**inputs, output_router_logits=True).aux_loss
    routing = TrainingRouting(model, find_moe_layers(model), Recipe("classify", "sst2", aux_loss_coef=0.1))
    try:
        model(**inputs)
        assert torch.allclose(routing.balancing_loss(inputs["attention_mask"]), reference)
    finally:
        routing.remove()


# -- 2. bi-level: the routers' requires_grad toggled every K micro-batches -----------------------------------


def test_bilevel_reference_freezes_the_routers_first_and_never_the_backbone(tiny_model, tmp_path):
    """K=1 (train_utils.py l.106-115): micro-batch 0 trains all but the routers, micro-batch 1 everything. Mixtral's
    routers are its `mlp.gate` linears (named here, not found by moe-rbench)."""
    start = tiny_model("mixtral")
    recipe = Recipe("classify", "sst2", head="causal_lm", bilevel=1)
    for steps in (1, 2):
        finetune(start, tmp_path / str(steps), recipe, FIXTURE_DATA, 8, FAST, max_steps=steps, **CPU)
    initial, one, two = weights(start), weights(tmp_path / "1"), weights(tmp_path / "2")
    routers = [name for name in initial if re.search(r"\.mlp\.gate\.weight$", name)]
    others = [name for name in initial if name not in routers and ("proj" in name or "embed" in name)]
    assert len(routers) == 2 and others
    assert all(torch.equal(initial[name], one[name]) for name in routers)
    assert all(not torch.equal(initial[name], one[name]) for name in others)
    assert all(not torch.equal(one[name], two[name]) for name in routers + others)


def test_bilevel_alternate_updates_the_backbone_then_only_the_routers(tiny_model, tmp_path):
    """moe-rbench's earlier method, by name: K=2 optimizer steps without the routers, then 2 of the routers only."""
    start = tiny_model("mixtral")
    recipe = Recipe("classify", "sst2", head="causal_lm", bilevel=2, bilevel_mode="alternate")
    for steps in (2, 4):
        finetune(start, tmp_path / str(steps), recipe, FIXTURE_DATA, 8, FAST, max_steps=steps, **CPU)
    initial, two, four = weights(start), weights(tmp_path / "2"), weights(tmp_path / "4")
    routers = [name for name in initial if re.search(r"\.mlp\.gate\.weight$", name)]
    backbone = [name for name in initial if name not in routers]
    assert all(torch.equal(initial[name], two[name]) for name in routers)
    assert all(not torch.equal(two[name], four[name]) for name in routers)
    assert all(torch.equal(two[name], four[name]) for name in backbone)


def test_bilevel_is_refused_where_toggling_requires_grad_breaks_the_gradient_sync(tiny_model, tmp_path):
    recipe = Recipe("classify", "sst2", head="causal_lm", bilevel=1)
    with pytest.raises(
        OptionError, match=r"breaks the gradient reducer of DDP .* run bi-level training in one process"
    ):
        finetune(tiny_model("mixtral"), tmp_path, recipe, FIXTURE_DATA, 8, FAST, fsdp=True, **CPU)


def test_router_freeze_keeps_every_router_parameter_bit_identical(tiny_model, tmp_path):
    start = tiny_model("olmoe")
    recipe = Recipe("classify", "sst2", head="causal_lm", router="freeze")
    finetune(start, tmp_path, recipe, FIXTURE_DATA, 8, FAST, max_steps=3, **CPU)
    before, after = weights(start), weights(tmp_path)
    routers = [name for name in before if re.search(r"\.mlp\.gate\.weight$", name)]
    assert routers and all(torch.equal(before[name], after[name]) for name in routers)
    others = [name for name in before if name not in routers]
    assert sum(not torch.equal(before[name], after[name]) for name in others) > len(others) // 2


def test_router_set_by_name_freezes_what_the_reference_freezes(tiny_model, tmp_path):
    """finetuning_anli.py l.273-280: every parameter whose name contains 'router' or 'gate' (the experts' gate_up_proj
    too); a dense Llama's gate_proj, as on OpenLLaMA."""
    for architecture in ("mixtral", "llama"):
        start = tiny_model(architecture)
        recipe = Recipe("classify", "sst2", head="causal_lm", router="freeze", router_set="by_name")
        finetune(start, tmp_path / architecture, recipe, FIXTURE_DATA, 8, FAST, max_steps=2, **CPU)
        before, after = weights(start), weights(tmp_path / architecture)
        named = {name for name in before if "router" in name or "gate" in name}
        assert named and {name for name in before if torch.equal(before[name], after[name])} == named


# -- 3. expert dropout on the interim activations inside each routed expert -----------------------------------


def experts_of(model):
    return find_moe_layers(model)[0].block.experts


def mixtral_experts_reference(experts, hidden, index, weights, rate: float, kernel: str) -> torch.Tensor:
    """Mixtral's experts written out: per (token, expert) pair interim = silu(gate) * up, F.dropout(interim, rate) in
    the kernel's call order and shape (grouped: one call on the expert-sorted pairs; eager: one call per expert hit,
    experts in ascending order), then the down projection, the routing weight and the sum over the token's experts."""
    k = index.shape[1]
    output = torch.zeros_like(hidden)
    if kernel == "grouped_mm":
        ids, order = torch.sort(index.reshape(-1))
        pairs = [(int(position) // k, int(position) % k) for position in order]
        groups = [[(ids[j].item(), pairs[j]) for j in range(len(pairs))]]
    else:
        groups = []
        for expert in sorted(set(index.reshape(-1).tolist())):
            slots, tokens = torch.where((index == expert).T)
            groups.append([(expert, (int(t), int(s))) for s, t in zip(slots, tokens, strict=True)])
    for group in groups:
        rows = torch.stack([hidden[token] for _, (token, _) in group])
        gate_up = torch.stack([experts.gate_up_proj[e] @ row for (e, _), row in zip(group, rows, strict=True)])
        gate, up = gate_up.chunk(2, dim=-1)
        interim = F.dropout(F.silu(gate) * up, rate, training=True)
        for (e, (token, slot)), values in zip(group, interim, strict=True):
            output[token] += (experts.down_proj[e] @ values) * weights[token, slot]
    return output


@pytest.mark.parametrize("kernel", ["grouped_mm", "eager"])
def test_expert_dropout_masks_the_interim_activations(tiny_model, kernel):
    path = tiny_model("mixtral")
    model = AutoModelForCausalLM.from_pretrained(path, experts_implementation=kernel).train()
    experts = experts_of(model)
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(6, 32, generator=generator)
    index = torch.stack([torch.randperm(4, generator=generator)[:2] for _ in range(6)])
    weights_ = torch.rand(6, 2, generator=generator)
    routing = TrainingRouting(model, find_moe_layers(model), Recipe("classify", "sst2", expert_dropout=0.5))
    try:
        torch.manual_seed(0)
        dropped = experts(hidden, index, weights_)
    finally:
        routing.remove()
    torch.manual_seed(0)
    with torch.no_grad():
        expected = mixtral_experts_reference(experts, hidden, index, weights_, 0.5, kernel)
    assert torch.allclose(dropped, expected, atol=1e-5)
    # dropout on the interim (64 values per pair) almost never zeroes an output value; on the output, half of them
    assert (dropped == 0).float().mean() < 0.01
    assert not torch.allclose(dropped, experts(hidden, index, weights_))  # the hooks are gone: no dropout


@pytest.mark.parametrize("architecture", CAUSAL_MOE)
def test_expert_dropout_runs_on_every_architecture_in_training_only(tiny_model, architecture):
    """Every supported MoE architecture (and the eager kernel where there is a choice): training outputs change,
    evaluation outputs and the shared experts do not, and no operation goes unrecognised."""
    path = tiny_model(architecture)
    kernels = ["grouped_mm", "eager"] if architecture not in ("llama4_text", "dbrx") else [None]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    for kernel in kernels:
        options = {"experts_implementation": kernel} if kernel else {}
        model = AutoModelForCausalLM.from_pretrained(path, **options)
        with torch.no_grad():
            evaluation = model.eval()(ids).logits
        block = find_moe_layers(model)[0].block
        shared = getattr(block, "shared_expert", None) or getattr(block, "shared_experts", None)
        seen = []
        if shared is not None:
            shared.register_forward_hook(lambda m, a, out, seen=seen: seen.append(out.detach().clone()))
        torch.manual_seed(0)
        plain = model.train()(ids).logits
        routing = TrainingRouting(model, find_moe_layers(model), Recipe("classify", "sst2", expert_dropout=0.5))
        try:
            torch.manual_seed(0)
            dropped = model(ids).logits
            dropped.sum().backward()
            with torch.no_grad():
                assert torch.equal(model.eval()(ids).logits, evaluation)
        finally:
            routing.remove()
        assert not torch.allclose(plain, dropped)
        if shared is not None:  # layer 0's shared expert sees the same input with and without expert dropout
            assert torch.equal(seen[0], seen[1])


def test_expert_dropout_refuses_what_it_cannot_place(tiny_model):
    """Experts without a known down projection are refused before training; experts that never multiply by it in a
    training forward stop the run: never a silent no-op."""
    from moe_rbench.finetune import for_model
    from moe_rbench_models.internals import InternalsChanged

    model = AutoModelForCausalLM.from_pretrained(tiny_model("mixtral"))
    layers = find_moe_layers(model)
    recipe = Recipe("classify", "sst2", expert_dropout=0.1)
    experts = layers[0].block.experts
    experts.register_parameter("w_out", experts.down_proj)
    del experts.down_proj
    with pytest.raises(OptionError, match=r"layer decoder.0 \(MixtralSparseMoeBlock\) has MixtralExperts with a"):
        for_model(recipe, model, layers)
    model = AutoModelForCausalLM.from_pretrained(tiny_model("mixtral")).train()
    layers = find_moe_layers(model)
    layers[0].block.experts.forward = lambda hidden, index, weights: torch.zeros_like(hidden)
    routing = TrainingRouting(model, layers, recipe)
    try:
        with pytest.raises(InternalsChanged, match="ran without multiplying activations by its down projection"):
            model(torch.tensor([[5, 6, 7]]))
    finally:
        routing.remove()


# -- 4. the trained top-k is the saved top-k -------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["mixtral", "dbrx"])
def test_the_checkpoint_routes_with_the_trained_top_k(tiny_model, tmp_path, architecture):
    recipe = Recipe("classify", "sst2", head="causal_lm", top_k=1)
    finetune(tiny_model(architecture), tmp_path, recipe, FIXTURE_DATA, 8, FAST, max_steps=1, **CPU)
    config = json.loads((tmp_path / "config.json").read_text())
    field = config["ffn_config"]["moe_top_k"] if architecture == "dbrx" else config["num_experts_per_tok"]
    lm = MoEHFLM(pretrained=str(tmp_path), device="cpu")
    experts_per_token = []
    for layer in find_moe_layers(lm.model):  # count what each experts module is handed
        layer.block.experts.register_forward_pre_hook(lambda m, args: experts_per_token.append(args[1].shape[-1]))
    lm.model(torch.tensor([[5, 6, 7, 8]]))
    assert field == 1 and experts_per_token == [1, 1]


# -- 5. data: the reference's protocols ---------------------------------------------------------------------------


def reference_anli_round(round_number: int) -> list[tuple[str, str, int]]:
    """load_adv_datasets.py l.41-71 written out: ANLI train_r{r}; SNLI train .shuffle(42), label -1 filtered, sliced;
    concatenated and .shuffle(42)."""
    anli = [json.loads(line) for line in (FIXTURE_DATA / f"anli/R{round_number}/train.jsonl").read_text().splitlines()]
    anli = datasets.Dataset.from_list(
        [{"premise": r["context"], "hypothesis": r["hypothesis"], "label": "enc".index(r["label"])} for r in anli]
    )
    lines = (FIXTURE_DATA / "snli/hf/train.tsv").read_text().splitlines()[1:]
    snli = [dict(zip(("premise", "hypothesis", "label"), line.split("\t"), strict=True)) for line in lines]
    esnli = datasets.Dataset.from_list([{**row, "label": int(row["label"])} for row in snli]).shuffle(42)
    esnli = esnli.filter(lambda example: example["label"] != -1)
    n = len(esnli)
    esnli = {1: esnli[: n // 9], 2: esnli[n // 3 : n // 3 + 1 * n // 6], 3: esnli[2 * n // 3 :]}[round_number]
    mixed = datasets.concatenate_datasets([anli, datasets.Dataset.from_dict(esnli)]).shuffle(42)
    return list(zip(mixed["premise"], mixed["hypothesis"], mixed["label"], strict=True))


@pytest.mark.parametrize("round_number", [1, 2, 3])
def test_anli_rounds_are_the_reference_mixtures_in_its_prompt(tiny_model, round_number):
    task, docs = classification_docs("anli", FIXTURE_DATA, round_number)
    assert task == f"moe_rbench_anli_r{round_number}"
    assert [(d["premise"], d["hypothesis"], d["label"]) for d in docs] == reference_anli_round(round_number)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("mixtral"))
    features = _classifier_features(Recipe("classify", "anli", max_length=24), tokenizer, task, docs)
    for doc, feature in zip(docs, features, strict=True):
        prompt = "Is this true ?\n" + doc["premise"] + "\n implies \n" + doc["hypothesis"] + "\n Answer: "
        assert feature["input_ids"] == tokenizer(prompt, truncation=True, max_length=24)["input_ids"]
        assert feature["labels"] == doc["label"]


def test_anli_rounds_refuse_an_snli_copy_without_its_unlabelled_rows(tmp_path):
    """The SNLI slices depend on the order of the whole split, label -1 rows included: a copy without them would give
    other slices, silently."""
    from moe_rbench_tasks.data import MalformedDataError

    shutil.copytree(FIXTURE_DATA / "anli", tmp_path / "anli")
    (tmp_path / "snli" / "hf").mkdir(parents=True)
    lines = (FIXTURE_DATA / "snli/hf/train.tsv").read_text().splitlines()
    (tmp_path / "snli/hf/train.tsv").write_text("\n".join(line for line in lines if not line.endswith("\t-1")) + "\n")
    with pytest.raises(MalformedDataError, match="has no label -1 rows: the ANLI protocol shuffles the whole SNLI"):
        classification_docs("anli", tmp_path, 1)
    assert len(classification_docs("snli", tmp_path)[1]) == 21  # the SNLI set alone needs no such rows


def _classifier_features(recipe, tokenizer, task_name, docs):
    import moe_rbench_tasks

    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    task = manager.load([task_name])["tasks"][task_name]
    return classification_features(recipe, tokenizer, task, docs)[0]


def test_anli_trains_the_rounds_in_sequence_each_with_a_fresh_schedule(tiny_model, tmp_path):
    recipe = Recipe("classify", "anli", anli_begin_round=2)
    step = Optimization(batch_size=2, learning_rate=1e-3, epochs=2.0)
    result = finetune(tiny_model("mixtral"), tmp_path, recipe, FIXTURE_DATA, 4, step, max_steps=3, **CPU)
    logged = [entry for entry in result.log_history if "loss" in entry]
    # rounds 2 and 3; 4 examples in batches of 2: 2 steps per epoch, x0.85 after each epoch, restarted each round
    assert [entry["round"] for entry in logged] == [2, 2, 2, 3, 3, 3]
    assert [entry["learning_rate"] for entry in logged] == pytest.approx([1e-3, 1e-3, 8.5e-4] * 2)


def test_snli_hard_trains_on_esnli_in_the_evaluation_prompt(tiny_model):
    task, docs = classification_docs("snli_hard", FIXTURE_DATA)
    rows = []
    for name in ("esnli_train_1.csv", "esnli_train_2.csv"):
        with open(FIXTURE_DATA / "esnli" / name, newline="") as file:
            rows += [row[1:4] for row in list(csv.reader(file))[1:]]
    labels = {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert task == "moe_rbench_snli_hard" and len(docs) == len(rows) == 7
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("mixtral"))
    features = _classifier_features(Recipe("classify", "snli_hard"), tokenizer, task, docs)
    for (label, first, second), feature in zip(rows, features, strict=True):
        prompt = f"Given the two sentences: (1) {first}. (2) {second}. Does the first sentence entail the second ?"
        assert feature["input_ids"] == tokenizer(prompt, truncation=True, max_length=512)["input_ids"]
        assert feature["labels"] == labels[label]


def test_alpaca_examples_are_the_references(tiny_model):
    """alpaca_dataset.py l.56-95 written out: [INST] + <<SYS>> Alpaca header <</SYS>> + instruction + [/INST], then
    ' ' + output + ' ', EOS, labels masked over the prompt's own encoding; ann[holdout:] trains."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("mixtral"))
    recipe = Recipe("instruct", head="causal_lm", alpaca_holdout=2, max_length=200)
    features, counts = instruction_features(recipe, tokenizer, FIXTURE_DATA, None)
    alpaca = json.loads((FIXTURE_DATA / "alpaca/alpaca_data.json").read_text())
    removed = json.loads((FIXTURE_DATA / "moe_rbench/alpaca_data_safety_only.json").read_text())
    ann = [row for row in alpaca if row not in removed][2:]
    no_input = (
        "<<SYS>>\nBelow is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n<</SYS>>\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    )
    with_input = (
        "<<SYS>>\nBelow is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n<</SYS>>\n\n### Instruction:\n"
        "{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    )
    assert counts["held_out"] == 2 and counts["cut_at_max_length"] == 1 and len(features) == len(ann) == 3
    for row, feature in zip(ann, features, strict=True):
        prompt = "[INST] " + (with_input if row.get("input", "") else no_input).format_map(row) + " [/INST]"
        example = (tokenizer.encode(prompt + " " + row["output"] + " ") + [tokenizer.eos_token_id])[:200]
        labels = [-100] * len(tokenizer.encode(prompt)) + example[len(tokenizer.encode(prompt)) :]
        assert feature["input_ids"] == example and feature["labels"] == labels[:200]


def test_the_safety_samples_removed_are_exactly_the_listed_ones():
    listed = json.loads((FIXTURE_DATA / "moe_rbench" / "alpaca_data_safety_only.json").read_text())
    alpaca = json.loads((FIXTURE_DATA / "alpaca" / "alpaca_data.json").read_text())
    examples, counts = instruction_examples(FIXTURE_DATA, prompt_format="alpaca", holdout=0)
    kept = [row for row in alpaca if row not in listed]
    assert counts == {"alpaca": 8, "removed_as_safety_related": 3} and len(examples) == len(kept) == 5
    assert [response for _, response in examples] == [row["output"] for row in kept]
    with_input = next(prompt for prompt, _ in examples if "### Input:" in prompt)
    assert with_input.endswith("### Input:\nThe cat sleeps on the sofa.\n\n### Response:\n")
    mixed, counts = instruction_examples(FIXTURE_DATA, safety_samples=2, holdout=0)
    safety = json.loads((FIXTURE_DATA / "safety_tuned_llamas/training/safety_only_data_Instructions.json").read_text())
    assert [response for _, response in mixed[-2:]] == [row["output"] for row in safety[:2]]
    assert len(instruction_examples(FIXTURE_DATA, keep_safety_samples=True, holdout=0)[0]) == 8


def test_truncation_cuts_the_right_end_by_default_and_the_left_by_name(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("mixtral"))
    task, docs = classification_docs("sst2", FIXTURE_DATA)
    prompts = [f"Given the sentences: {doc['sentence']}\n what is the sentiment of this sentence ? " for doc in docs]
    for side in ("right", "left"):
        features = _classifier_features(
            Recipe("classify", "sst2", max_length=10, truncation=side), tokenizer, task, docs
        )
        whole = [tokenizer(prompt)["input_ids"] for prompt in prompts]
        assert [f["input_ids"] for f in features] == [ids[:10] if side == "right" else ids[-10:] for ids in whole]


TEXTS = ["Given the sentences: a gorgeous film\n what is the sentiment", "contains no wit , only labored gags"]


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
    options = ["--limit", "5", "--log_samples", "--output_path", str(out)]
    lm_eval_cli(f"pretrained={path}", "moe_rbench_sst2", *options, data_dir=data)
    samples = sorted(lm_eval_outputs(out)[1]["moe_rbench_sst2"], key=lambda sample: sample["doc_id"])
    lm = MoEHFLM(pretrained=str(path), device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    task, docs = classification_docs("sst2", data)
    label_words = _classifier_features(Recipe("classify", "sst2", head="causal_lm"), tokenizer, task, docs)
    heads = _classifier_features(Recipe("classify", "sst2"), tokenizer, task, docs)
    for sample, word, head in zip(samples, label_words, heads, strict=True):
        target = int(sample["target"])
        request = sample["arguments"][f"gen_args_{target}"]
        context, continuation = request["arg_0"], request["arg_1"]
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        assert word["input_ids"] == context_ids + continuation_ids
        assert word["labels"] == [-100] * len(context_ids) + continuation_ids
        assert encode_pair(tokenizer, context, continuation) == (context_ids, continuation_ids)
        assert head["input_ids"] == lm.tok_batch_encode([context])[0][0].tolist() and head["labels"] == target


# -- optimizer, schedulers, batches ----------------------------------------------------------------------------


def test_weight_decay_reaches_every_parameter_as_the_reference_adamw(tiny_model, tmp_path):
    """optim.AdamW(model.parameters(), weight_decay=w): after one step, decoupled decay moves every parameter, norms
    included, by -lr x w x p0 relative to the same step without decay (Trainer's grouping exempts the norms)."""
    start = tiny_model("mixtral")
    recipe = Recipe("classify", "sst2", head="causal_lm")
    for decay in (0.0, 0.5):
        step = Optimization(learning_rate=1e-2, batch_size=8, weight_decay=decay)
        finetune(start, tmp_path / str(decay), recipe, FIXTURE_DATA, 8, step, max_steps=1, **CPU)
    initial, plain, decayed = weights(start), weights(tmp_path / "0.0"), weights(tmp_path / "0.5")
    norms = [name for name in initial if "norm" in name]
    assert norms
    for name in norms:
        assert torch.allclose(decayed[name] - plain[name], -1e-2 * 0.5 * initial[name], atol=1e-6)


@pytest.mark.parametrize("scheduler", ["step", "cosine", "linear"])
def test_schedules_are_the_references(tiny_model, tmp_path, scheduler):
    """2 epochs of 4 steps (8 examples, batch 2): StepLR(gamma 0.85) per epoch; transformers' cosine (3 cycles) and
    linear schedules with the float warm-up 0.1 x 8 = 0.8 steps, written out here."""
    step = Optimization(learning_rate=1e-3, batch_size=2, epochs=2.0, scheduler=scheduler, warmup_fraction=0.1)
    result = finetune(tiny_model("mixtral"), tmp_path, Recipe("classify", "sst2"), FIXTURE_DATA, 8, step, **CPU)
    total, warmup = 8, 0.8

    def factor(t: int) -> float:
        if scheduler == "step":
            return 0.85 ** (t // 4)
        if t < warmup:
            return t / max(1, warmup)
        progress = (t - warmup) / max(1, total - warmup)
        if scheduler == "linear":
            return max(0.0, (total - t) / max(1, total - warmup))
        return max(0.0, 0.5 * (1 + math.cos(math.pi * 3 * 2 * progress)))

    assert rates(result) == pytest.approx([1e-3 * factor(t) for t in range(total)], rel=1e-6)


def test_a_global_batch_of_several_reference_gpus_is_one_accumulated_step(tiny_model, tmp_path):
    """4 GPUs x batch 2 (drop_last per rank): the first step's loss is the mean of the four ranks' mean losses over
    the batches torch's DistributedSampler(seed=0) gives each rank, written out here."""
    path = tiny_model("mixtral")
    step = Optimization(batch_size=2, reference_gpus=4)
    result = finetune(path, tmp_path, Recipe("classify", "sst2"), FIXTURE_DATA, 16, step, max_steps=1, **CPU)
    task, docs = classification_docs("sst2", FIXTURE_DATA)
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = _classifier_features(Recipe("classify", "sst2"), tokenizer, task, docs[:16])
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0)).tolist()
    model = classifier_as_finetune_loads(path)
    rank_losses = []
    for rank in range(4):
        batch = [features[i] for i in order[rank::4][:2]]
        inputs = tokenizer.pad([{k: f[k] for k in ("input_ids", "attention_mask")} for f in batch], return_tensors="pt")
        with torch.no_grad():
            rank_losses.append(float(model(**inputs, labels=torch.tensor([f["labels"] for f in batch])).loss))
    assert losses(result)[0] == pytest.approx(sum(rank_losses) / 4, rel=1e-5)


def classifier_as_finetune_loads(path):
    """The checkpoint with a 2-class head initialised after set_seed(42), as finetune loads it."""
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(42)
    names = {0: "negative", 1: "positive"}
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label=names, label2id={v: k for k, v in names.items()}
    )
    model.config.pad_token_id = AutoTokenizer.from_pretrained(path).pad_token_id
    return model.train()


# -- presets ---------------------------------------------------------------------------------------------------


def script_values(path: Path) -> dict[str, str]:
    """A reference script's variables (the last assignment wins) and the flags its torchrun command passes."""
    text = path.read_text()
    variables = {}
    for name, value in re.findall(r"^(?:export\s+)?(\w+)=(\S*)\s*$", text, flags=re.MULTILINE):
        variables[name] = re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), ""), value)
    command = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], text[text.index("torchrun") :])
    flags = dict(re.findall(r"--(\w+)(?: ([^-\s\\][^\s\\]*))?", command))
    return {**flags, "gpu_num": variables["gpu_num"]}


@pytest.mark.parametrize(
    "script",
    [
        "adv_nli/llama_moe_4_16",
        "adv_nli/pythia_410m",
        "snli-hard/molm_700m_4b",
        "style_ood/pythia_1.4b",
        "boss_sa/molm_sa",
    ],
)
def test_presets_carry_the_scripts_values(script):
    values = script_values(SCRIPTS / f"{script}.sh")
    preset = PRESETS[script]
    optimization, recipe = preset.optimization, preset.recipe
    assert optimization["learning_rate"] == float(values["lr"])
    assert optimization["epochs"] == float(values["num_epochs"])
    assert optimization["batch_size"] == int(values["batch_size_training"])
    assert optimization["reference_gpus"] == int(values["gpu_num"]) == int(values["nproc_per_node"])
    assert optimization["weight_decay"] == float(values["weight_decay"]) and optimization["max_grad_norm"] == 0
    assert optimization["scheduler"] == values["scheduler_type"]
    assert optimization["warmup_fraction"] == (0.08 if values["dataset"].startswith("adv_dataset") else 0.1)
    assert recipe.get("anli_begin_round", 1) == int(values.get("begin_round", "1"))
    frozen = "freeze_router" in values and values["model_type"] in ("molm", "llama_moe")
    assert (recipe.get("router") == "freeze") == frozen
    assert recipe.get("aux_loss_coef", 0.0) == 0.0  # decoder-only classifiers never add it (preset notes)


def test_a_preset_runs_from_the_command_line_and_its_checkpoint_through_lm_eval(tiny_model, tmp_path):
    checkpoint = tmp_path / "classifier"
    command = [str(BIN / "moe-rbench"), "finetune", str(tiny_model("mixtral")), str(checkpoint)]
    options = ["--preset", "snli-hard/molm_350m_4b", "--batch_size", "2", "--reference_gpus", "2", "--max_steps", "2"]
    result = run([*command, *options, "--data_dir", str(FIXTURE_DATA), "--training_args", "use_cpu=true"])
    assert "recipe: classify:snli_hard (router=freeze, expert_dropout=0.1)" in result.stdout, result.stdout
    saved = json.loads((checkpoint / "config.json").read_text())["moe_rbench_recipe"]
    assert saved["preset"] == "snli-hard/molm_350m_4b" and saved["optimization"]["learning_rate"] == 1e-4
    out = tmp_path / "eval"
    args = f"pretrained={checkpoint},head=sequence_classification"
    lm_eval_cli(args, "moe_rbench_snli_hard", "--limit", "4", "--output_path", str(out))
    results, _ = lm_eval_outputs(out)
    label = "classify:snli_hard (router=freeze, expert_dropout=0.1)"
    assert results["config"]["moe"]["recipe"]["label"] == label
    assert 0 <= results["results"]["moe_rbench_snli_hard"]["acc,none"] <= 1
    run([str(BIN / "moe-rbench"), "report", str(out), "--out", str(tmp_path / "report")])
    assert f"[{label}]" in (tmp_path / "report" / "report.md").read_text()


def test_finetune_runs_under_accelerate_launch(tiny_model, tmp_path):
    command = [str(BIN / "accelerate"), "launch", "--num_processes", "1", "--cpu", "-m", "moe_rbench.cli", "finetune"]
    options = ["--protocol", "instruct", "--alpaca_holdout", "0", "--max_steps", "2", "--data_dir", str(FIXTURE_DATA)]
    result = run([*command, str(tiny_model("qwen2_moe")), str(tmp_path / "out"), *options, "--expert_dropout", "0.1"])
    assert "recipe: instruct:alpaca (expert_dropout=0.1)" in result.stdout
    assert json.loads((tmp_path / "out" / "config.json").read_text())["moe_rbench_recipe"]["expert_dropout"] == 0.1


# -- refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "options", "message"),
    [
        ("llama", ["--router", "freeze"], "--router needs a Mixture-of-Experts model; LlamaForSequenceClassification"),
        ("mixtral", ["--router", "frozen"], "argument --router: invalid choice: 'frozen'"),
        ("deepseek_v3", ["--aux_loss_coef", "0.1"], "defines no load_balancing_loss_func"),
        ("mixtral", ["--preset", "adv_nli/t5"], "argument --preset: invalid choice: 'adv_nli/t5'"),
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
        ({"dataset": "sst3"}, "--protocol classify needs --dataset, one of sst2, anli"),
        ({"safety_samples": 3}, "--keep_safety_samples and --safety_samples belong to --protocol instruct"),
        ({"anli_begin_round": 2}, "--anli_begin_round must be 1, 2 or 3, and only with --dataset anli"),
        ({"truncation": "middle"}, "--truncation must be right or left"),
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
        ("llama", {"router": "freeze"}, "add --router_set by_name"),
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
