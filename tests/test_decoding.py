"""DoLa and SCMoE in `moe_hf`, against plain references written here: one sequence at a time, full
recomputation with every hidden state at every step, position by position (the DoLa TruthfulQA
script's way), repetition penalty applied after the contrast."""

from __future__ import annotations

import json
from collections import Counter

import lm_eval
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import BIN, FIXTURE_DATA, STYLE_OOD_TASKS, lm_eval_cli, lm_eval_outputs, run
from lm_eval.api.instance import Instance
from transformers import AutoModelForCausalLM, DynamicCache

import moe_rbench_tasks
from moe_rbench_models import MoEHFLM
from moe_rbench_models.routing import load_records
from moe_rbench_models.tiny import build_tiny_model

# four layers, so that there are several candidate premature layers; weights large enough that layers and
# routings disagree (with the default 0.02 every early-exit distribution is nearly uniform)
DECODING_MODEL = dict(num_hidden_layers=4, initializer_range=0.3)
CONTEXTS = [
    "Given the sentences: a gentle , funny film\n what is the sentiment of this sentence ? ",
    "Q: What is the capital of France?\nA:",
    "lol",
]
SCORING = [
    (CONTEXTS[0], "negative"),
    (CONTEXTS[0], "positive"),  # multiple choice: one shared context
    (CONTEXTS[1], " Paris"),
    (CONTEXTS[1], " The capital of France is Paris, a city on the Seine."),
    (CONTEXTS[2], " this movie was sooo bad #fail, worst two hours of my life tbh " * 4),  # > one 64-position chunk
    ("Is this true ?", " Yes"),
    ("Is this true ?", " Maybe"),
    ("Is this true ?", " No"),
]
PROMPTS = [
    "Q: What is the capital of France?\nA:",
    "### Instruction: Explain why the sky is blue.",
    "lol",
    "Thou art a most excellent and noble film",
    "And it came to pass that",
]
MAX_NEW = 8
# the DoLa TruthfulQA-MC setting, and every other choice at once
DOLA_OPTIONS = [
    dict(dola_layers="1,2,3", dola_relative_top=0.0, dola_post_softmax=False),
    dict(dola_layers="0,2", dola_relative_top=0.1, dola_post_softmax=True, dola_final_norm=True, dola_divergence="jsd"),
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding_models")
    built = {}

    def get(architecture: str):
        if architecture not in built:
            built[architecture] = build_tiny_model(architecture, root / architecture, **DECODING_MODEL)
        return built[architecture]

    return get


def scoring_requests():
    return [Instance("loglikelihood", {}, pair, i, metadata=("probe", i, 1)) for i, pair in enumerate(SCORING)]


def generation_requests(**kwargs):
    gen = {"until": ["\n\n"], "max_gen_toks": MAX_NEW, "do_sample": False, **kwargs}
    return [Instance("generate_until", {}, (p, dict(gen)), 0, metadata=("gen", i, 1)) for i, p in enumerate(PROMPTS)]


# -- the references ----------------------------------------------------------------------------------------


def implausible(final_logits: torch.Tensor, relative_top: float) -> torch.Tensor:
    scores = final_logits.log_softmax(-1)
    return scores < scores.max() + np.log(relative_top)


def dola_position(model, output, position: int, o: dict) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Contrast scores, chosen layer and final logits at one position of one full forward pass."""
    layers = [int(layer) for layer in str(o["dola_layers"]).split(",")]
    final = output.logits[0, position].float()
    premature = {}
    for layer in layers:
        hidden = output.hidden_states[layer][0, position]
        premature[layer] = model.lm_head(model.model.norm(hidden) if o.get("dola_final_norm") else hidden).float()
    if len(layers) == 1:
        chosen = layers[0]
    else:
        distances = []
        for layer in layers:
            p, q = final.softmax(-1), premature[layer].softmax(-1)
            m = 0.5 * (p + q)
            if o.get("dola_divergence", "reference") == "reference":  # as in the DoLa repository
                kl1 = F.kl_div(final.log_softmax(-1), m, reduction="none").mean(-1)
                kl2 = F.kl_div(premature[layer].log_softmax(-1), m, reduction="none").mean(-1)
                distances.append(0.5 * (kl1 + kl2))
            else:
                distances.append(0.5 * ((p * (p.log() - m.log())).sum() + (q * (q.log() - m.log())).sum()))
        chosen = layers[int(torch.stack(distances).argmax())]
    diff = final.log_softmax(-1) - premature[chosen].log_softmax(-1)
    if o.get("dola_post_softmax"):
        diff = diff.log_softmax(-1)
    return diff, chosen, final


@torch.no_grad()
def reference_dola_score(model, lm, context: str, continuation: str, o: dict) -> tuple[float, Counter]:
    context_ids, continuation_ids = lm._encode_pair(context, continuation)
    output = model(torch.tensor([context_ids + continuation_ids]), output_hidden_states=True)
    total, chosen = 0.0, Counter()
    for i, token in enumerate(continuation_ids):
        diff, layer, final = dola_position(model, output, len(context_ids) - 1 + i, o)
        if o.get("dola_relative_top", 0.1) > 0:
            diff = diff.masked_fill(implausible(final, o.get("dola_relative_top", 0.1)), -1000.0)
        total += float(diff[token])
        chosen[layer] += 1
    return total, chosen


def repetition_penalty(scores: torch.Tensor, ids: list[int], penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor, written out."""
    scores = scores.clone()
    for token in set(ids):
        scores[token] = scores[token] * penalty if scores[token] < 0 else scores[token] / penalty
    return scores


@torch.no_grad()
def reference_generate(lm, prompt: str, next_scores, penalty: float = 1.0) -> tuple[str, Counter]:
    """Greedy decoding with full recomputation; `next_scores(ids)` -> (scores [V], chosen layer or None)."""
    ids = lm.tok_encode(prompt)
    generated, chosen = [], Counter()
    for _ in range(MAX_NEW):
        scores, layer = next_scores(ids + generated)
        chosen[layer] += 1
        if penalty != 1.0:
            scores = repetition_penalty(scores, ids + generated, penalty)
        generated.append(int(scores.argmax()))
        if generated[-1] == lm.tokenizer.eos_token_id:
            break
    return lm.tok_decode(generated).split("\n\n")[0], chosen


def dola_next(model, o):
    def next_scores(ids):
        output = model(torch.tensor([ids]), output_hidden_states=True)
        diff, layer, final = dola_position(model, output, len(ids) - 1, o)
        if o.get("dola_relative_top", 0.1) > 0:
            diff = diff.masked_fill(implausible(final, o.get("dola_relative_top", 0.1)), float("-inf"))
        return diff, layer

    return next_scores


def load_reference(path, **config):
    return AutoModelForCausalLM.from_pretrained(str(path), **config).eval()


# -- DoLa ---------------------------------------------------------------------------------------------------


@pytest.mark.equivalence
@pytest.mark.parametrize("architecture", ["mixtral", "olmoe", "qwen3_moe", "llama"])
@pytest.mark.parametrize("options", DOLA_OPTIONS, ids=["truthfulqa_mc", "other_choices"])
def test_dola_scoring_matches_the_reference_at_batch_sizes_1_and_8(model_path, architecture, options):
    path = model_path(architecture)
    reference = load_reference(path)
    lm = MoEHFLM(pretrained=str(path), device="cpu", batch_size=1, **options)
    expected = [
        reference_dola_score(reference, lm, context, continuation, options) for context, continuation in SCORING
    ]
    for request, (score, chosen) in zip(
        scoring_requests(), expected, strict=True
    ):  # one request at a time: its chosen layers
        before = Counter(lm._contrast.chosen)
        (answer,) = lm.loglikelihood([request], disable_tqdm=True)
        assert answer[0] == pytest.approx(score, abs=1e-4, rel=1e-6)
        assert Counter(lm._contrast.chosen) - before == chosen
    batched = MoEHFLM(pretrained=str(path), device="cpu", batch_size=8, **options)
    answers = batched.loglikelihood(scoring_requests(), disable_tqdm=True)
    assert [a[0] for a in answers] == pytest.approx([score for score, _ in expected], abs=1e-4, rel=1e-6)
    if not options["dola_post_softmax"]:  # raw sums are no log-probabilities: lm-eval's log-softmax was bypassed
        assert max(score for score, _ in expected) > 0


@pytest.mark.equivalence
@pytest.mark.parametrize("architecture", ["mixtral", "olmoe", "qwen3_moe", "llama"])
@pytest.mark.parametrize("options", DOLA_OPTIONS, ids=["truthfulqa_mc", "other_choices"])
def test_dola_generation_matches_the_reference_at_batch_sizes_1_and_8(model_path, architecture, options):
    path = model_path(architecture)
    reference = load_reference(path)
    penalty = 1.2 if options["dola_relative_top"] else 1.0
    lm = MoEHFLM(pretrained=str(path), device="cpu", batch_size=1, **options)
    plain = MoEHFLM(pretrained=str(path), device="cpu", batch_size=8)
    expected = [reference_generate(lm, prompt, dola_next(reference, options), penalty) for prompt in PROMPTS]
    for request, (text, chosen) in zip(generation_requests(repetition_penalty=penalty), expected, strict=True):
        before = Counter(lm._contrast.chosen)
        assert lm.generate_until([request], disable_tqdm=True) == [text]
        assert Counter(lm._contrast.chosen) - before == chosen
    batched = MoEHFLM(pretrained=str(path), device="cpu", batch_size=8, **options)  # left padding
    texts = batched.generate_until(generation_requests(repetition_penalty=penalty), disable_tqdm=True)
    assert texts == [text for text, _ in expected]
    assert texts != plain.generate_until(generation_requests(repetition_penalty=penalty), disable_tqdm=True)


@pytest.mark.equivalence
def test_dola_select_batch_takes_one_layer_per_step_for_the_whole_batch(model_path):
    """Old transformers' rule: the candidate whose divergence, averaged over the batch, is largest."""
    path = model_path("mixtral")
    reference = load_reference(path)
    options = dict(dola_layers="1,2,3", dola_select="batch", dola_relative_top=0.1)
    lm = MoEHFLM(pretrained=str(path), device="cpu", batch_size=8, **options)
    prompts = ["Is this true ? Yes", "Is this true ? No"]  # the same token length: no padding
    assert len(lm.tok_encode(prompts[0])) == len(lm.tok_encode(prompts[1]))
    ids = [lm.tok_encode(prompt) for prompt in prompts]
    finished = [False] * len(prompts)
    chosen = Counter()
    with torch.no_grad():
        for _ in range(MAX_NEW):
            output = reference(torch.tensor(ids), output_hidden_states=True)
            final = output.logits[:, -1].float().log_softmax(-1)
            premature = torch.stack(
                [reference.lm_head(output.hidden_states[j][:, -1]).float().log_softmax(-1) for j in (1, 2, 3)]
            )
            m = 0.5 * (final.exp() + premature.exp())
            distance = 0.5 * (
                F.kl_div(final.expand_as(premature), m, reduction="none").mean(-1)
                + F.kl_div(premature, m, reduction="none").mean(-1)
            )  # [3, batch]
            layer = int(distance.mean(-1).argmax())
            chosen[layer + 1] += len(prompts)
            scores = (final - premature[layer]).masked_fill(
                final < final.max(-1, keepdim=True).values + np.log(0.1), float("-inf")
            )
            for row, token in enumerate(scores.argmax(-1).tolist()):  # finished rows go on with padding, as in generate
                ids[row].append(lm.tokenizer.pad_token_id if finished[row] else token)
                finished[row] |= token == lm.tokenizer.eos_token_id
    requests = [
        Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": MAX_NEW}), 0, ("b", i, 1))
        for i, p in enumerate(prompts)
    ]
    expected = [
        lm.tok_decode(row[len(lm.tok_encode(p)) :]).split("\n\n")[0] for row, p in zip(ids, prompts, strict=True)
    ]
    assert lm.generate_until(requests, disable_tqdm=True) == expected
    assert lm._contrast.chosen == chosen


def test_dola_layer_rules_and_results_config(model_path):
    lm = MoEHFLM(pretrained=str(model_path("mixtral")), device="cpu", dola_layers="paper")
    assert lm._contrast.layers == (2,)  # even layers of the top half of 4
    assert MoEHFLM(pretrained=str(model_path("mixtral")), device="cpu", dola_layers="high")._contrast.layers == (2,)
    assert MoEHFLM(pretrained=str(model_path("mixtral")), device="cpu", dola_layers="low")._contrast.layers == (0,)
    lm.loglikelihood(scoring_requests()[:2], disable_tqdm=True)
    decoding = lm.get_model_info()["moe"]["decoding"]
    assert decoding["method"] == "dola" and decoding["mature_layer"] == 4 and decoding["candidate_layers"] == [2]
    assert decoding["chosen_premature_layers"]["2"] > 0


def test_dola_works_with_routing_capture(model_path, tmp_path):
    path = model_path("olmoe")
    dola = MoEHFLM(pretrained=str(path), device="cpu", dola_layers="1,2,3")
    both = MoEHFLM(pretrained=str(path), device="cpu", dola_layers="1,2,3", routing_out=str(tmp_path))
    assert both.loglikelihood(scoring_requests()) == dola.loglikelihood(scoring_requests())
    assert both.generate_until(generation_requests()) == dola.generate_until(generation_requests())
    both.close()
    records = list(load_records(tmp_path))
    assert len(records) == len(SCORING) + len(PROMPTS)


# -- SCMoE --------------------------------------------------------------------------------------------------


def self_contrast_next(strong, weak, beta, alpha):
    def next_scores(ids):
        s = strong(torch.tensor([ids])).logits[0, -1].float()
        w = weak(torch.tensor([ids])).logits[0, -1].float()
        scores = (1 + beta) * s.log_softmax(-1) - beta * w.log_softmax(-1)
        return scores.masked_fill(implausible(s, alpha), float("-inf")), None

    return next_scores


@pytest.mark.equivalence
@pytest.mark.parametrize("architecture", ["mixtral", "olmoe", "qwen3_moe"])
def test_scmoe_matches_a_reference_running_both_routings_separately(model_path, architecture):
    path = model_path(architecture)
    strong, weak = load_reference(path), load_reference(path, num_experts_per_tok=1)
    beta, alpha = 0.5, 0.1
    expected_scores = []
    lm = MoEHFLM(pretrained=str(path), device="cpu", batch_size=1, scmoe_beta=beta)
    with torch.no_grad():
        for context, continuation in SCORING:
            context_ids, continuation_ids = lm._encode_pair(context, continuation)
            ids = torch.tensor([context_ids + continuation_ids])
            s, w = strong(ids).logits[0].float(), weak(ids).logits[0].float()
            total = 0.0
            for i, token in enumerate(continuation_ids):
                position = len(context_ids) - 1 + i
                scores = (1 + beta) * s[position].log_softmax(-1) - beta * w[position].log_softmax(-1)
                total += float(scores.masked_fill(implausible(s[position], alpha), -1000.0)[token])
            expected_scores.append(total)
    texts = [reference_generate(lm, prompt, self_contrast_next(strong, weak, beta, alpha))[0] for prompt in PROMPTS]
    for batch_size in (1, 8):
        lm = MoEHFLM(pretrained=str(path), device="cpu", batch_size=batch_size, scmoe_beta=beta)
        scores = [answer[0] for answer in lm.loglikelihood(scoring_requests(), disable_tqdm=True)]
        assert scores == pytest.approx(expected_scores, abs=1e-4, rel=1e-6)
        assert lm.generate_until(generation_requests(), disable_tqdm=True) == texts


@pytest.mark.equivalence
@pytest.mark.parametrize("passing", ["cache", "past_key_values", "position"])
def test_scmoe_keeps_its_weak_cache_apart_however_the_cache_is_passed(model_path, passing):
    """transformers 5.24 renamed generate's cache argument (past_key_values -> cache): drive the model as a
    generate loop does, handing the cache over by the new name, the old name and by position."""
    path = model_path("mixtral")
    strong, weak = load_reference(path), load_reference(path, num_experts_per_tok=1)
    lm = MoEHFLM(pretrained=str(path), device="cpu", scmoe_beta=0.5)
    prompt = lm.tok_encode(PROMPTS[1])
    reference = self_contrast_next(strong, weak, 0.5, 0.1)
    expected = []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            expected.append(int(reference(prompt + expected)[0].argmax()))
    cache, inputs, generated = DynamicCache(config=lm.model.config), torch.tensor([prompt]), []
    with torch.no_grad(), lm._contrast.active("generate"):
        for _ in range(MAX_NEW):
            if passing == "position":  # forward(input_ids, attention_mask, position_ids, cache, ...)
                output = lm.model(inputs, None, None, cache)
            else:
                output = lm.model(inputs, **{passing: cache})
            generated.append(int(output.logits[0, -1].argmax()))
            inputs = torch.tensor([generated[-1:]])
    assert generated == expected
    assert cache.get_seq_length() == len(prompt) + MAX_NEW - 1  # the weak pass never wrote into it


def test_scmoe_weak_pass_is_invisible_to_routing_capture(model_path, tmp_path):
    path = model_path("qwen3_moe")
    plain = MoEHFLM(pretrained=str(path), device="cpu", routing_out=str(tmp_path / "plain"))
    contrast = MoEHFLM(pretrained=str(path), device="cpu", routing_out=str(tmp_path / "scmoe"), scmoe_beta=0.5)
    for lm in (plain, contrast):
        lm.loglikelihood(scoring_requests(), disable_tqdm=True)
        lm.close()
    records = [sorted(load_records(tmp_path / name), key=lambda r: r.doc_id) for name in ("plain", "scmoe")]
    assert len(records[0]) == len(records[1]) == len(SCORING)
    for a, b in zip(*records, strict=True):
        for key, layer in a.layers.items():
            np.testing.assert_array_equal(layer.continuation_ids, b.layers[key].continuation_ids)
            assert layer.continuation_ids.shape[-1] == 2  # the strong routing's top-2, not the weak top-1


# -- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "options", "message"),
    [
        ("mixtral", {"dola_layers": "1,7"}, "out of range"),
        ("mixtral", {"dola_layers": "4"}, "mature layer"),
        ("mixtral", {"dola_layers": "middle"}, "paper, high, low"),
        ("mixtral", {"dola_relative_top": 0.2}, "needs dola_layers"),
        ("mixtral", {"dola_layers": "paper", "scmoe_beta": 0.5}, "choose one"),
        ("mixtral", {"dola_layers": "paper", "dola_divergence": "kl"}, "dola_divergence"),
        ("llama", {"scmoe_beta": 0.5}, "Mixture-of-Experts"),
        ("mixtral", {"scmoe_beta": 0.5, "scmoe_weak_k": 9}, "between 1 and 4"),
        (
            "mixtral",
            {"scmoe_beta": 0.5, "scmoe_weak_k": 2},
            r"scmoe_weak_k=2 is not weaker than the model's own routing",
        ),
        ("mixtral", {"scmoe_beta": 0.5, "scmoe_weak_k": 1, "top_k": 1}, r"top-k \[1\] in layers decoder.0"),
    ],
)
def test_invalid_decoding_options_fail_clearly(model_path, architecture, options, message):
    with pytest.raises(ValueError, match=message):
        MoEHFLM(pretrained=str(model_path(architecture)), device="cpu", **options)


def test_scmoe_weak_routing_below_an_intervened_top_k_is_accepted(model_path):
    lm = MoEHFLM(pretrained=str(model_path("mixtral")), device="cpu", scmoe_beta=0.5, scmoe_weak_k=2, top_k=3)
    assert lm._contrast.options.weak_k == 2


def test_unsupported_models_fail_clearly(tiny_model):
    with pytest.raises(ValueError, match="selects no layer of this 2-layer model"):
        MoEHFLM(pretrained=str(tiny_model("mixtral")), device="cpu", dola_layers="paper")
    with pytest.raises(ValueError, match="encoder-decoder"):
        MoEHFLM(pretrained=str(tiny_model("t5")), device="cpu", dola_layers="0")
    with pytest.raises(ValueError, match="fixed number of experts"):
        MoEHFLM(pretrained=str(tiny_model("phimoe")), device="cpu", scmoe_beta=0.5)


def test_models_whose_head_or_final_norm_cannot_be_located_fail_clearly(tmp_path):
    from transformers import AutoConfig

    from moe_rbench_models.tiny import tiny_tokenizer

    def save(model_type, **config):
        config = AutoConfig.for_model(
            model_type, vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2, **config
        )
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(tmp_path / model_type)
        tiny_tokenizer().save_pretrained(tmp_path / model_type)
        return str(tmp_path / model_type)

    cohere = save(
        "cohere",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        logit_scale=0.5,
    )
    with pytest.raises(ValueError, match="post-processes them"):  # Cohere scales its logits
        MoEHFLM(pretrained=cohere, device="cpu", dola_layers="0")
    gpt = save("openai-gpt", n_embd=32, n_layer=2, n_head=4, n_positions=64)  # post-norm: no final norm
    MoEHFLM(pretrained=gpt, device="cpu", dola_layers="0")
    with pytest.raises(ValueError, match="final norm of OpenAIGPTLMHeadModel could not be located"):
        MoEHFLM(pretrained=gpt, device="cpu", dola_layers="0", dola_final_norm=True)


# -- the stock command line -----------------------------------------------------------------------------------

GENERATION_TASK = """task: moe_rbench_test_generation
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


def test_lm_eval_cli_with_dola_changes_accuracies_and_generations(tmp_path):
    """The issue's acceptance run: the stock command with dola_layers=paper, against a plain run of the
    same tasks through the Python API (a heavier initialisation, so that some predictions can flip)."""
    model = tmp_path / "mixtral"
    run(
        [
            str(BIN / "moe-rbench"),
            "tiny-model",
            "mixtral",
            str(model),
            "--set",
            "num_hidden_layers=4",
            "--set",
            "initializer_range=1.0",
        ]
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    questions = [
        {"question": q, "answer": a}
        for q, a in [
            ("What is the capital of France?", "Paris"),
            ("Why is the sky blue?", "Scattering"),
            ("Who wrote Hamlet?", "Shakespeare"),
        ]
    ]
    (tasks / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tasks / "generation.yaml").write_text(GENERATION_TASK.format(data=tasks / "questions.jsonl"))
    task_names = ["moe_rbench_ood", "moe_rbench_test_generation"]
    options = ["--include_path", str(tasks), "--limit", "5", "--batch_size", "8", "--log_samples"]
    lm_eval_cli(
        f"pretrained={model},dola_layers=paper", ",".join(task_names), *options, "--output_path", str(tmp_path / "dola")
    )
    dola, dola_samples = lm_eval_outputs(tmp_path / "dola")
    plain = lm_eval.simple_evaluate(
        model=MoEHFLM(pretrained=str(model), device="cpu", batch_size=8),
        tasks=task_names,
        limit=5,
        log_samples=True,
        task_manager=moe_rbench_tasks.task_manager(
            str(tasks), include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)}
        ),
    )
    accuracies = [
        {task: result["acc,none"] for task, result in results["results"].items() if task in STYLE_OOD_TASKS}
        for results in (plain, dola)
    ]
    assert set(accuracies[0]) == set(accuracies[1]) == set(STYLE_OOD_TASKS)
    assert accuracies[0] != accuracies[1]
    generations = [
        [s["resps"] for s in samples["moe_rbench_test_generation"]] for samples in (plain["samples"], dola_samples)
    ]
    assert len(generations[1]) == len(questions) and generations[0] != generations[1]
    assert dola["config"]["moe"]["decoding"]["candidate_layers"] == [2]
    assert dola["config"]["model_args"]["dola_layers"] == "paper"
