"""From routing to action: `attribute` finds the experts behind a behaviour, `force_experts` / `disable_experts`
steer them, `steer` re-measures. The model is one where the answer is known: a tiny top-1 Mixtral whose first
router sends the token `@` to expert 3 and no other token there, and whose second router is zeroed (no expert
differs)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BIN, FIXTURE_DATA, evaluate_to, lm_eval_outputs, run
from lm_eval.api.instance import Instance
from scipy.stats import t as student_t
from transformers import AutoModelForCausalLM, AutoTokenizer

from moe_rbench.attribute import (
    Attribution,
    AttributionError,
    ExpertRow,
    SetSummary,
    SteeringPlan,
    UnitCounts,
    attribute_experts,
    model_argument,
    pair_units,
    select_documents,
    select_experts,
)
from moe_rbench.attribution_stats import paired_tests, unpaired_tests
from moe_rbench.judging import judge_samples
from moe_rbench.steer import SteerOptions, check_options
from moe_rbench_models import MoEHFLM
from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing import load_manifest, load_records
from moe_rbench_models.tiny import build_tiny_model
from moe_rbench_tasks.judges import load_judge

PLANTED = "@"
WORDS = [
    "the",
    "film",
    "was",
    "a",
    "gentle",
    "funny",
    "story",
    "about",
    "old",
    "friends",
    "who",
    "meet",
    "again",
    "after",
    "many",
    "years",
    "on",
    "a",
    "quiet",
    "road",
]


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory):
    path = build_tiny_model("mixtral", tmp_path_factory.mktemp("planted"), num_experts_per_tok=1)
    model = AutoModelForCausalLM.from_pretrained(path)
    (planted_id,) = AutoTokenizer.from_pretrained(path)(PLANTED)["input_ids"]
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[:, 0] = -1.0  # dimension 0 says "is @": -1 for every token but @
        embeddings[planted_id, 0] = 1.0
        first, second = (layer.mlp.gate.weight for layer in model.model.layers)
        model.model.layers[0].self_attn.o_proj.weight.zero_()  # the first router sees the token's embedding alone
        first[:, 0] = 0.0  # experts 0-2 choose by the rest of the embedding
        first[3] = 0.0
        first[3, 0] = 20.0  # expert 3: a high logit on @, a very low one on every other token
        second.zero_()  # all experts tie in the second layer, whatever the token
    model.save_pretrained(path)
    return path


def text(index: int, planted: bool) -> str:
    words = [WORDS[(index * 7 + i) % len(WORDS)] for i in range(6 + index % 5)]
    if planted:
        words.insert(2 + index % 3, PLANTED)
    return " ".join(words)


def record_two_sets(model_path, out, documents: int = 12):
    """Routing records of documents with @ (task `planted`) and without (task `plain`), as lm-eval requests."""
    requests = [
        Instance("loglikelihood", {}, (text(i, task == "planted"), " end"), 0, metadata=(task, i, 1))
        for task in ("planted", "plain")
        for i in range(documents)
    ]
    with MoEHFLM(pretrained=str(model_path), device="cpu", batch_size=8, routing_out=str(out)) as lm:
        lm.loglikelihood(requests)
    return out


@pytest.fixture(scope="module")
def planted_records(planted_model, tmp_path_factory):
    return record_two_sets(planted_model, tmp_path_factory.mktemp("routing"))


def test_attribution_finds_the_planted_expert_and_nothing_the_routing_does_not_show(planted_records):
    attribution = attribute_experts(planted_records, "planted", "plain")
    first = attribution.rows[0]
    assert (first.layer, first.expert) == ("decoder.0", 3)
    assert first.risk_difference > 0 and first.rate_b == 0 and first.significant and first.q_value < 1e-3
    # @ tokens go to expert 3 alone, so the other experts of the first layer are a little less active in A (by
    # about 0.044 x their share): too little to flag over 12 documents. The zeroed second router differs nowhere.
    assert not [row for row in attribution.rows[1:] if row.significant]
    assert not [row for row in attribution.rows if row.layer == "decoder.1" and row.risk_difference != 0]
    assert attribution.a.documents == attribution.b.documents == 12
    assert select_experts(attribution, 5, 0).forced == {"decoder.0": [3]}


@pytest.mark.equivalence
def test_rates_and_standard_errors_equal_an_independent_computation(planted_records):
    attribution = attribute_experts(planted_records, "planted", "plain")
    per_doc = {"planted": [], "plain": []}
    for record in load_records(planted_records):  # the prompt: context entries and the first continuation entry
        routing = record.layers["decoder.0"]
        ids = np.concatenate([routing.context_ids, routing.continuation_ids[:1]])
        per_doc[record.task].append(((ids == 3).any(-1).sum(), len(ids)))
    row = next(r for r in attribution.rows if (r.layer, r.expert) == ("decoder.0", 3))
    variances, rates = [], []
    for task in ("planted", "plain"):
        hits, tokens = map(np.array, zip(*per_doc[task], strict=True))
        rate = hits.sum() / tokens.sum()
        n = len(hits)  # ratio-estimator variance of a clustered proportion, by its textbook formula
        variances.append(n / (n - 1) * ((hits - rate * tokens) ** 2).sum() / tokens.sum() ** 2)
        rates.append(rate)
        assert {"planted": row.rate_a, "plain": row.rate_b}[task] == pytest.approx(rate, abs=1e-6)
    assert row.stderr == pytest.approx(math.sqrt(sum(variances)), abs=1e-6)
    # Student's t with (fewer documents - 1) degrees of freedom (C(24, 12) labelings: too many to enumerate), but
    # never below 2 / C(24, 12), the smallest p-value the exact permutation test can give: here t says 3.8e-8
    t_value = (rates[0] - rates[1]) / math.sqrt(sum(variances))
    assert 2 * student_t.sf(t_value, 11) < 2 / math.comb(24, 12) and row.test == "clustered t"
    assert row.p_value == pytest.approx(2 / math.comb(24, 12), rel=1e-9)
    other = next(r for r in attribution.rows if (r.layer, r.expert) == ("decoder.0", 0))
    assert other.p_value == pytest.approx(2 * student_t.sf(abs(other.z), 11), rel=1e-6)  # above the floor
    assert other.p_value > 2 / math.comb(24, 12)


def test_the_model_arguments_steer_the_expert(planted_model, planted_records, tmp_path):
    from lm_eval._cli.utils import key_val_to_dict

    attribution = attribute_experts(planted_records, "planted", "plain")
    plan = select_experts(attribution, 1, 0)
    assert plan.forced == {"decoder.0": [3]}
    argument = model_argument(attribution, plan)
    assert argument == 'force_experts="0:3"'
    options = key_val_to_dict(f"pretrained={planted_model},{argument}")  # as lm_eval --model_args reads it
    with MoEHFLM(device="cpu", routing_out=str(tmp_path / "forced"), **options) as lm:
        lm.loglikelihood([Instance("loglikelihood", {}, (text(1, False), " end"), 0, metadata=("plain", 0, 1))])
    (record,) = load_records(tmp_path / "forced")
    assert (record.layers["decoder.0"].context_ids == 3).any(-1).all()  # every token, none of them an @
    unforced = [r for r in load_records(planted_records) if r.task == "plain"]
    assert not any((r.layers["decoder.0"].context_ids == 3).any() for r in unforced)
    # steering toward `plain`: expert 3 is more active in B, so it is disabled; with a forced expert of the second
    # layer, one configuration
    swapped = select_experts(attribute_experts(planted_records, "plain", "planted"), 0, 1)
    assert (swapped.forced, swapped.disabled) == ({}, {"decoder.0": [3]})
    plan = SteeringPlan({"decoder.1": [2]}, swapped.disabled, "significant", "reroute", (1, 1))
    argument = model_argument(attribution, plan)
    assert argument == 'force_experts="1:2",disable_experts="0:3",disable_mode=reroute'
    options = key_val_to_dict(f"pretrained={planted_model},{argument}")
    assert (options["force_experts"], options["disable_experts"], options["disable_mode"]) == ("1:2", "0:3", "reroute")
    with MoEHFLM(device="cpu", routing_out=str(tmp_path / "both"), **options) as lm:
        lm.loglikelihood([Instance("loglikelihood", {}, (text(1, True), " end"), 0, metadata=("planted", 0, 1))])
    (record,) = load_records(tmp_path / "both")
    assert not (record.layers["decoder.0"].context_ids == 3).any()  # the @ went elsewhere
    assert (record.layers["decoder.1"].context_ids == 2).all()
    # SteerMoE's soft deactivation through the same argument: expert 3 is ranked last, never among the top 2 of 4
    soft = model_argument(attribution, SteeringPlan({}, swapped.disabled, "steermoe", "steermoe", (0, 1)))
    assert soft == 'disable_experts="0:3",disable_mode=steermoe'
    with MoEHFLM(
        device="cpu", routing_out=str(tmp_path / "soft"), **key_val_to_dict(f"pretrained={planted_model},{soft}")
    ) as lm:
        lm.loglikelihood([Instance("loglikelihood", {}, (text(1, True), " end"), 0, metadata=("planted", 0, 1))])
    (record,) = load_records(tmp_path / "soft")
    assert not (record.layers["decoder.0"].context_ids == 3).any()


def test_the_attribute_command_writes_table_figure_and_model_arguments(planted_records, tmp_path):
    result = run(planted_vs_plain("attribute", planted_records, tmp_path / "out", "--force", "1", "--disable", "1"))
    first_row = next(line for line in result.stdout.splitlines() if line.startswith("| decoder"))
    # 12 @ among the 287 prompt positions of A (every prompt token is an input once: 275 context entries and 12
    # first continuation entries); the 12 vs 12 documents are too many to enumerate: the clustered t-test
    assert first_row.startswith("| decoder.0 | 3 | 0.0418 | 0.0000 | +0.0418 |") and "| clustered t |" in first_row
    written = json.loads((tmp_path / "out" / "attribution.json").read_text())
    assert (written["rows"][0]["layer"], written["rows"][0]["expert"]) == ("decoder.0", 3)
    # no expert is significantly more active in B: only the forced one
    assert written["model_args"] == 'force_experts="0:3"' and written["steering"]["disabled"] == {}
    assert (tmp_path / "out" / "attribution.png").stat().st_size > 1000
    assert (tmp_path / "out" / "attribution.csv").read_text().splitlines()[1].startswith("decoder.0,3,")
    # SteerMoE's selection asks for rows of each sign without a test: the table is written, the shortfall an error
    command = planted_vs_plain(
        "attribute", planted_records, tmp_path / "steermoe", "--selection", "steermoe", "--force", "1"
    )
    result = run([*command, "--disable", "9"], check=False)
    assert result.returncode == 2 and "the top 9 with A - B < 0; there are 1 and 2 such rows" in result.stderr
    assert "No steering plan: SteerMoE's selection" in (tmp_path / "steermoe" / "attribution.md").read_text()
    result = run([*command, "--disable", "2"])  # the two experts a little less active in A, untested
    written = json.loads((tmp_path / "steermoe" / "attribution.json").read_text())
    assert written["model_args"] == 'force_experts="0:3",disable_experts="0:1,2",disable_mode=reroute'
    # the flags of one direction per run are gone, with the way to say the same now
    result = run(
        [*planted_vs_plain("attribute", planted_records, tmp_path / "steermoe"), "--top", "3", "--direction", "force"],
        check=False,
    )
    assert result.returncode == 2 and "`--direction force --top N` is `--force N`" in result.stderr


def test_sets_by_correctness_are_the_documents_lm_eval_scored_right_and_wrong(tiny_model, tmp_path):
    lm = MoEHFLM(pretrained=str(tiny_model("olmoe")), device="cpu", batch_size=8, routing_out=str(tmp_path / "r"))
    evaluate_to(tmp_path / "run", lm, ["moe_rbench_sst2"], limit=16)
    lm.close()
    _, samples = lm_eval_outputs(tmp_path / "run")
    right = {("moe_rbench_sst2", s["doc_id"]) for s in samples["moe_rbench_sst2"] if s["acc"] == 1}
    recorded = {(r.task, r.doc_id) for r in load_records(tmp_path / "r")}
    tasks, run_id = {"moe_rbench_sst2"}, load_manifest(tmp_path / "r")["run"]
    correct = select_documents("correct", tasks, tmp_path / "run", None, run_id)
    assert (correct.documents, correct.left_out) == (right, 0)
    assert select_documents("wrong", tasks, tmp_path / "run", None, run_id).documents == recorded - right
    attribution = attribute_experts(tmp_path / "r", "correct", "wrong", tmp_path / "run")
    assert (attribution.a.documents, attribution.b.documents) == (len(right), 16 - len(right))
    with pytest.raises(AttributionError, match=r"line 1: correct/wrong needs a 0/1 score .* --metric"):
        select_documents("correct", tasks, tmp_path / "run", "nonexistent", run_id)
    # the same documents recorded by another run: the samples are not that run's
    with MoEHFLM(
        pretrained=str(tiny_model("olmoe")), device="cpu", batch_size=8, routing_out=str(tmp_path / "r2")
    ) as lm:
        evaluate_to(tmp_path / "run2", lm, ["moe_rbench_sst2"], limit=16)
    with pytest.raises(AttributionError, match=r"records routing run .* but the routing records are of run"):
        attribute_experts(tmp_path / "r2", "correct", "wrong", tmp_path / "run")


def test_sets_by_a_judges_verdict_leave_out_what_it_did_not_judge(tiny_model, tmp_path):
    lm = MoEHFLM(pretrained=str(tiny_model("olmoe")), device="cpu", batch_size=8, routing_out=str(tmp_path / "r"))
    evaluate_to(tmp_path / "run", lm, ["moe_rbench_safety_dna"], limit=8, gen_kwargs="max_gen_toks=4")
    lm.close()
    (judged,) = [p for p in judge_samples(tmp_path / "run", load_judge("refusal"), None) if p.name.startswith("judged")]
    rows = [json.loads(line) for line in judged.read_text().splitlines()]
    for row in rows:  # the verdicts a model that refuses every other prompt would get; one unjudged
        row["refusal"] = None if row["doc_id"] == 7 else row["doc_id"] % 2 == 0
    judged.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_id = load_manifest(tmp_path / "r")["run"]
    refused = select_documents("judge:refusal=true", {"moe_rbench_safety_dna"}, tmp_path / "run", None, run_id)
    assert refused.documents == {("moe_rbench_safety_dna", i) for i in (0, 2, 4, 6)} and refused.left_out == 1
    attribution = attribute_experts(tmp_path / "r", "judge:refusal=true", "judge:refusal=false", tmp_path / "run")
    assert (attribution.a.documents, attribution.b.documents, attribution.b.left_out) == (4, 3, 1)


def test_encoder_decoder_spans_a_multiple_choice_context_once_and_layers_without_span_tokens_untested(
    tiny_model, tmp_path
):
    requests = [
        Instance("loglikelihood", {}, (text(i, False) + " is it", choice), c, metadata=(task, i, 1))
        for task in ("x", "y")
        for i in range(4)
        for c, choice in enumerate([" yes it is", " no", " maybe so"])
    ]
    with MoEHFLM(pretrained=str(tiny_model("switch_transformers")), device="cpu", routing_out=str(tmp_path)) as lm:
        lm.loglikelihood(requests)
    contexts, decoder = {}, {"scored": 0, "continuation": 0}
    for record in load_records(tmp_path):  # tokens kept (not dropped for capacity), from the record arrays
        encoder, routing = record.layers["encoder.1"], record.layers["decoder.1"]
        contexts[(record.task, record.doc_id)] = int((~encoder.context_dropped).sum())
        kept = ~routing.continuation_dropped if record.task == "x" else np.zeros(0, dtype=bool)
        # the decoder's first input is the decoder-start token (0 in T5-style models): in no span but scored and all
        assert record.continuation_inputs[0] == 0 and list(record.continuation_inputs[1:]) == list(
            record.continuation_tokens[:-1]
        )
        decoder["scored"] += int(kept.sum())
        decoder["continuation"] += int(kept[1:].sum())
    prompt = attribute_experts(tmp_path, "x", "y")
    assert prompt.a.tokens == sum(n for (task, _), n in contexts.items() if task == "x")  # not three times that
    # the prompt reaches the encoder only: decoder layers are left out of the tests (and of the q-values)
    assert prompt.untested == ["decoder.1"] and {row.layer for row in prompt.rows} == {"encoder.1"}
    for span in ("scored", "continuation"):
        attribution = attribute_experts(tmp_path, "x", "y", span=span)
        assert attribution.untested == ["encoder.1"] and {row.layer for row in attribution.rows} == {"decoder.1"}
        assert attribution.a.tokens == decoder[span] > 0
    # every position once: the encoder layer sees the contexts, the decoder layer every decoder position
    assert attribute_experts(tmp_path, "x", "y", span="all").a.tokens == max(prompt.a.tokens, decoder["scored"])


@pytest.mark.parametrize(
    ("a", "b", "samples", "message"),
    [
        ("planted", "nothing_*", None, r"'nothing_\*': no recorded task matches nothing_\*; recorded tasks: plain, "),
        ("planted", "planted,plain", None, r"'planted' and 'planted,plain' share 12 document\(s\)"),
        ("correct", "wrong", None, r"'correct' reads the run's samples: pass --samples"),
        ("judge:refusal", "plain", "SAMPLES", r"write judge:FIELD=VALUE"),
    ],
)
def test_sets_that_cannot_be_formed_are_refused_with_the_fix(planted_records, tmp_path, a, b, samples, message):
    with pytest.raises(AttributionError, match=message):
        attribute_experts(planted_records, a, b, tmp_path if samples else None)


def planted_vs_plain(command: str, records: Path, out: Path, *options: str) -> list[str]:
    """`moe-rbench attribute` or `steer` on the planted records, sets `planted` (A) vs `plain` (B)."""
    sets = ["--routing", str(records), "--a", "planted", "--b", "plain"]
    return [str(BIN / "moe-rbench"), command, *sets, *options, "--out", str(out)]


def test_steer_forces_the_planted_expert_and_writes_the_before_after_table(planted_model, planted_records, tmp_path):
    metadata = json.dumps({"data_dir": str(FIXTURE_DATA)})
    lm_eval_args = [
        "--model",
        "moe_hf",
        "--model_args",
        f"pretrained={planted_model}",
        "--tasks",
        "moe_rbench_sst2",
        "--limit",
        "10",
        "--device",
        "cpu",
        "--metadata",
        metadata,
    ]
    result = run(
        [*planted_vs_plain("steer", planted_records, tmp_path / "out", "--force", "3"), "--", *lm_eval_args],
        timeout=600,
    )
    assert 'force_experts="0:3"' in result.stdout and "| moe_rbench_sst2 / acc,none |" in result.stdout
    before, before_samples = lm_eval_outputs(tmp_path / "out" / "before")
    after, after_samples = lm_eval_outputs(tmp_path / "out" / "after")
    assert after["config"]["moe"]["interventions"]["per_layer"]["decoder.0"]["forced"] == [3]
    table = json.loads((tmp_path / "out" / "steer.json").read_text())
    (accuracy,) = [row for row in table["rows"] if row["name"] == "moe_rbench_sst2 / acc,none"]
    assert accuracy["baseline"] == before["results"]["moe_rbench_sst2"]["acc,none"]
    assert accuracy["candidate"] == after["results"]["moe_rbench_sst2"]["acc,none"]
    scores = [
        {s["doc_id"]: s["acc"] for s in samples["moe_rbench_sst2"]} for samples in (before_samples, after_samples)
    ]
    differences = [scores[1][doc] - scores[0][doc] for doc in scores[0]]
    responses = [
        [s["filtered_resps"] for s in samples["moe_rbench_sst2"]] for samples in (before_samples, after_samples)
    ]
    assert responses[0] != responses[1]  # forcing expert 3 on every token changed the scores
    assert accuracy["change"] == pytest.approx(np.mean(differences))
    assert accuracy["stderr"] == pytest.approx(np.std(differences, ddof=1) / math.sqrt(10), abs=1e-9)
    assert accuracy["test"] == "McNemar"


def test_steer_refuses_an_evaluation_it_cannot_steer(planted_records, tmp_path):
    command = [*planted_vs_plain("steer", planted_records, tmp_path), "--"]
    result = run([*command, "--model", "hf", "--tasks", "moe_rbench_sst2"], check=False)
    assert result.returncode == 2 and "steer evaluates with `--model moe_hf` or `--model moe_vllm`" in result.stderr
    steermoe = [*planted_vs_plain("steer", planted_records, tmp_path, "--disable_mode", "steermoe"), "--"]
    result = run([*steermoe, "--model", "moe_vllm", "--tasks", "moe_rbench_sst2"], check=False)
    assert result.returncode == 2 and "moe_vllm disables experts with disable_mode=reroute only" in result.stderr
    for model_args, message in [
        ('pretrained=x,force_experts="0:1"', "set force_experts; steer adds the intervention itself"),
        ('{"pretrained": "x", "routing_out": "r"}', "set routing_out; steer adds"),
        ("pretrained", "--model_args 'pretrained': expected `key=value`"),
    ]:
        result = run([*command, "--model", "moe_hf", "--model_args", model_args], check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr


# -- spans, tests, selection and pairs against independent computations -------------------------------------------


def record_spans(model_path, out):
    """Two answers per prompt. `tail`: the prompt ends in @, answer 0 holds an @; `plain` (ids shifted by one, so
    three documents align with `tail` by id): no @ in the prompt, answer 1 holds one. `only_at` (prompts of @ alone)
    and `no_at`: two documents each."""

    def answers(task: str, i: int) -> tuple[str, str]:
        if task == "tail":
            return " " + text(i + 1, True), " " + text(i + 2, False)
        return " " + text(i + 3, False), " " + text(i + 4, True)

    requests = [
        Instance("loglikelihood", {"id": f"k{i + (task == 'plain')}"}, (context, answer), c, metadata=(task, i, 1))
        for task in ("tail", "plain")
        for i in range(4)
        for context in [text(i, False) + (" @" if task == "tail" else "")]
        for c, answer in enumerate(answers(task, i))
    ]
    requests += [
        Instance(
            "loglikelihood",
            {},
            (PLANTED * (3 + i) if task == "only_at" else text(i + 5, False), " end"),
            0,
            metadata=(task, i, 1),
        )
        for task in ("only_at", "no_at")
        for i in range(2)
    ]
    with MoEHFLM(pretrained=str(model_path), device="cpu", batch_size=8, routing_out=str(out)) as lm:
        lm.loglikelihood(requests)
    return out


@pytest.fixture(scope="module")
def span_records(planted_model, tmp_path_factory):
    return record_spans(planted_model, tmp_path_factory.mktemp("spans"))


def inputs_in_span(records, span: str) -> dict[str, list[np.ndarray]]:
    """Per task, the input tokens of the positions a span counts, written from the record arrays by the rule: a
    causal model's first continuation entry reads the last prompt token, entry j > 0 reads continuation token j-1."""
    per_task: dict[str, list[np.ndarray]] = {}
    for record in records:
        assert list(record.continuation_inputs[1:]) == list(record.continuation_tokens[:-1])
        prompt = np.concatenate([record.context_tokens, record.continuation_inputs[:1]])
        answer = record.continuation_inputs[1:]
        first_answer = record.request_index == 0  # the document's prompt once, with its first request
        chosen = {
            "prompt": [prompt] if first_answer else [],
            "continuation": [answer],
            "scored": [record.continuation_inputs],
            "all": ([prompt] if first_answer else []) + [answer],
        }[span]
        per_task.setdefault(record.task, []).extend(chosen)
    return per_task


def test_spans_count_the_positions_whose_input_is_a_prompt_or_continuation_token(span_records, planted_model):
    (planted_id,) = AutoTokenizer.from_pretrained(planted_model)(PLANTED)["input_ids"]
    records = list(load_records(span_records))
    for record in records:  # the first router sends a position to expert 3 exactly when its input is @
        routing = record.layers["decoder.0"]
        for ids, inputs in (
            (routing.context_ids, record.context_tokens),
            (routing.continuation_ids, record.continuation_inputs),
        ):
            assert list((ids == 3).any(-1)) == list(inputs == planted_id)
    for span in ("prompt", "continuation", "scored", "all"):
        attribution = attribute_experts(span_records, "tail", "plain", span=span)
        row = next(r for r in attribution.rows if (r.layer, r.expert) == ("decoder.0", 3))
        inputs = {task: np.concatenate(parts) for task, parts in inputs_in_span(records, span).items()}
        assert (attribution.a.tokens, attribution.b.tokens) == (len(inputs["tail"]), len(inputs["plain"])), span
        assert row.rate_a == pytest.approx(np.mean(inputs["tail"] == planted_id), abs=1e-12), span
        assert row.rate_b == pytest.approx(np.mean(inputs["plain"] == planted_id), abs=1e-12), span
    # the @ that ends each `tail` prompt is a prompt input (a position the old `continuation` counted, and the old
    # `prompt` did not); the @ inside the answers is a continuation input
    assert attribute_experts(span_records, "tail", "plain", span="prompt").rows[0].rate_a > 0
    with pytest.raises(AttributionError, match=r"share the prompt of 4 document\(s\) .* --span continuation"):
        attribute_experts(span_records, "choice:0@tail", "choice:1@tail", span="prompt")


def brute_force_permutation(units_a: list[tuple[int, int]], units_b: list[tuple[int, int]]) -> Fraction:
    """Exact two-sided permutation p-value of the difference of pooled rates, every relabeling enumerated, in
    exact arithmetic; units are (hits, tokens)."""
    units = units_a + units_b

    def difference(in_a) -> Fraction:
        a = [units[i] for i in in_a]
        b = [units[i] for i in range(len(units)) if i not in in_a]
        return Fraction(sum(h for h, _ in a), sum(t for _, t in a)) - Fraction(
            sum(h for h, _ in b), sum(t for _, t in b)
        )

    observed = abs(difference(range(len(units_a))))
    labelings = list(itertools.combinations(range(len(units)), len(units_a)))
    return Fraction(sum(abs(difference(set(labeling))) >= observed for labeling in labelings), len(labelings))


def brute_force_sign_flip(pairs: list[tuple[tuple[int, int], tuple[int, int]]]) -> Fraction:
    """Exact two-sided sign-flip p-value: A and B swapped within every subset of the pairs, in exact arithmetic."""

    def difference(flips) -> Fraction:
        a = [pair[flip] for pair, flip in zip(pairs, flips, strict=True)]
        b = [pair[1 - flip] for pair, flip in zip(pairs, flips, strict=True)]
        return Fraction(sum(h for h, _ in a), sum(t for _, t in a)) - Fraction(
            sum(h for h, _ in b), sum(t for _, t in b)
        )

    observed = abs(difference([0] * len(pairs)))
    flips = list(itertools.product((0, 1), repeat=len(pairs)))
    return Fraction(sum(abs(difference(f)) >= observed for f in flips), len(flips))


def hits_and_tokens(records, expert: int, layer: str = "decoder.0") -> tuple[int, int]:
    """An expert's activations and the tokens over the continuation positions of some records (entries 1..)."""
    ids = np.concatenate([record.layers[layer].continuation_ids[1:] for record in records])
    return int((ids == expert).any(-1).sum()), len(ids)


def test_two_documents_per_set_never_give_p_zero(span_records):
    """Expert 3 on every prompt token of A (prompts of @ alone), never in B: the clustered standard error is 0 and
    the t-test said p = 0; the exact permutation test over C(4, 2) = 6 labelings gives 2/6 (the observed labeling
    and its mirror image)."""
    attribution = attribute_experts(span_records, "only_at", "no_at")
    row = next(r for r in attribution.rows if (r.layer, r.expert) == ("decoder.0", 3))
    assert (row.rate_a, row.rate_b, row.stderr) == (1.0, 0.0, 0.0)
    assert row.p_value == pytest.approx(2 / 6, abs=1e-12) and row.test == "exact permutation"
    assert not row.significant  # 2 documents a side cannot show anything at q < 0.05


def test_exact_permutation_p_values_equal_a_brute_force(span_records):
    attribution = attribute_experts(span_records, "tail", "plain", span="continuation")
    records = list(load_records(span_records))
    for row in (r for r in attribution.rows if r.layer == "decoder.0"):
        units = [
            [hits_and_tokens([r for r in records if (r.task, r.doc_id) == (task, i)], row.expert) for i in range(4)]
            for task in ("tail", "plain")
        ]
        assert row.test == "exact permutation"  # C(8, 4) = 70 labelings
        assert row.p_value == pytest.approx(float(brute_force_permutation(*units)), abs=1e-12), row
    assert {row.test for row in attribution.rows} == {"exact permutation"}


def test_pairs_by_document_compare_two_answers_to_one_prompt(span_records):
    attribution = attribute_experts(
        span_records, "choice:0@tail", "choice:1@tail", span="continuation", pair_by="document"
    )
    assert (attribution.pairs, attribution.a.documents, attribution.a.unpaired) == (4, 4, 0)
    records = {(r.doc_id, r.request_index): r for r in load_records(span_records) if r.task == "tail"}
    for row in (r for r in attribution.rows if r.layer == "decoder.0"):
        pairs = [tuple(hits_and_tokens([records[(i, c)]], row.expert) for c in (0, 1)) for i in range(4)]
        rate_a = Fraction(sum(a[0] for a, _ in pairs), sum(a[1] for a, _ in pairs))
        assert row.rate_a == pytest.approx(float(rate_a), abs=1e-12)
        assert row.test == "exact sign-flip"  # 2^4 sign flips
        assert row.p_value == pytest.approx(float(brute_force_sign_flip(pairs)), abs=1e-12), row
    expert_3 = next(r for r in attribution.rows if (r.layer, r.expert) == ("decoder.0", 3))
    assert expert_3.rate_b == 0 and expert_3.p_value == pytest.approx(2 / 16)  # answer 0 alone holds an @


def test_pairs_by_doc_key_use_complete_pairs_only(span_records):
    attribution = attribute_experts(span_records, "tail", "plain", span="continuation", pair_by="doc_key")
    # tail holds ids k0-k3, plain k1-k4: three complete pairs, one document of each left out
    assert attribution.pairs == 3 and (attribution.a.unpaired, attribution.b.unpaired) == (1, 1)
    assert attribution.a.documents == attribution.b.documents == 3
    by_document = defaultdict(list)
    for record in load_records(span_records):
        by_document[(record.task, record.doc_id)].append(record)
    for row in (r for r in attribution.rows if r.layer == "decoder.0"):
        pairs = [
            (
                hits_and_tokens(by_document[("tail", k)], row.expert),
                hits_and_tokens(by_document[("plain", k - 1)], row.expert),
            )
            for k in (1, 2, 3)
        ]
        assert row.p_value == pytest.approx(float(brute_force_sign_flip(pairs)), abs=1e-12), row
    with pytest.raises(AttributionError, match=r"--pair_by document: 0 complete pair\(s\) .* choice:0 with choice:1"):
        attribute_experts(span_records, "tail", "plain", span="continuation", pair_by="document")


def t_reference(difference: float, stderr: float, degrees: int) -> float:
    return 2 * student_t.sf(abs(difference) / stderr, degrees)


def test_many_units_keep_the_clustered_t_test_and_a_zero_variance_cell_its_exact_p():
    rng = np.random.default_rng(7)
    tokens_a, tokens_b = rng.integers(5, 40, (30, 1)), rng.integers(5, 40, (30, 1))
    # expert 0 random, expert 1 on every token of A and never in B (zero variance in both sets)
    counts_a = np.stack([rng.binomial(tokens_a[:, 0], 0.3), tokens_a[:, 0]], axis=-1)[:, None, :]
    counts_b = np.stack([rng.binomial(tokens_b[:, 0], 0.2), np.zeros(30, dtype=int)], axis=-1)[:, None, :]
    result = unpaired_tests(counts_a, tokens_a, counts_b, tokens_b, np.array([True]))
    variances = []
    for counts, tokens in ((counts_a[:, 0, 0], tokens_a[:, 0]), (counts_b[:, 0, 0], tokens_b[:, 0])):
        rate = counts.sum() / tokens.sum()  # the ratio estimator's variance, by its textbook formula
        variances.append(30 / 29 * ((counts - rate * tokens) ** 2).sum() / tokens.sum() ** 2)
    difference = counts_a[:, 0, 0].sum() / tokens_a.sum() - counts_b[:, 0, 0].sum() / tokens_b.sum()
    assert list(result.test[0]) == ["clustered t", "exact (zero variance)"]  # C(60, 30) labelings: too many
    assert result.p_value[0, 0] == pytest.approx(t_reference(difference, math.sqrt(sum(variances)), 29), rel=1e-9)
    assert result.p_value[0, 1] == pytest.approx(2 / math.comb(60, 30), rel=1e-9)  # observed labeling and mirror
    # a rate of 1/49 in every unit of A, 0 in B: zero variance, though the floating-point residuals are about 1e-17
    tokens_a, tokens_b = (np.arange(30) % 5 + 1)[:, None] * 49, (np.arange(30) % 7 + 5)[:, None]
    thin = unpaired_tests((tokens_a // 49)[:, :, None], tokens_a, np.zeros((30, 1, 1), int), tokens_b, np.array([True]))
    assert thin.test[0, 0] == "exact (zero variance)" and thin.p_value[0, 0] == pytest.approx(2 / math.comb(60, 30))
    # 1100 units a side: the exact p-value (about 10^-661) is below every float: the smallest positive one, not 0
    big = [np.ones((1100, 1, 1), dtype=int), np.zeros((1100, 1, 1), dtype=int)]
    huge = unpaired_tests(big[0], np.ones((1100, 1)), big[1], np.ones((1100, 1)), np.array([True]))
    assert huge.p_value[0, 0] == np.nextafter(0, 1) > 0 and huge.test[0, 0] == "exact (zero variance)"


def test_exact_permutation_enumerates_only_the_units_with_tokens_in_a_layer():
    rng = np.random.default_rng(3)
    tokens_a, tokens_b = rng.integers(1, 30, (4, 2)), rng.integers(1, 30, (3, 2))
    tokens_a[0, 1] = 0  # the first unit of A has no tokens in layer 1: 6 units take part there, 7 in layer 0
    counts_a, counts_b = (
        rng.binomial(tokens_a[:, :, None], 0.4, (4, 2, 3)),
        rng.binomial(tokens_b[:, :, None], 0.2, (3, 2, 3)),
    )
    result = unpaired_tests(counts_a, tokens_a, counts_b, tokens_b, np.array([True, True]))
    for layer in (0, 1):
        for expert in range(3):
            units = [
                [(int(c[u, layer, expert]), int(t[u, layer])) for u in range(len(t)) if t[u, layer]]
                for c, t in ((counts_a, tokens_a), (counts_b, tokens_b))
            ]
            assert result.test[layer, expert] == "exact permutation"
            assert result.p_value[layer, expert] == pytest.approx(float(brute_force_permutation(*units)), abs=1e-12)


def test_many_pairs_use_the_paired_t_test_and_a_zero_variance_cell_its_exact_p():
    rng = np.random.default_rng(11)
    pairs = 20
    tokens_a, tokens_b = rng.integers(5, 30, (pairs, 1)), rng.integers(5, 30, (pairs, 1))
    counts_a = np.stack([rng.binomial(tokens_a[:, 0], 0.35), tokens_a[:, 0]], axis=-1)[:, None, :]
    counts_b = np.stack([rng.binomial(tokens_b[:, 0], 0.25), np.zeros(pairs, dtype=int)], axis=-1)[:, None, :]
    result = paired_tests(counts_a, tokens_a, counts_b, tokens_b, np.array([True]))
    ca, cb, ta, tb = counts_a[:, 0, 0], counts_b[:, 0, 0], tokens_a[:, 0], tokens_b[:, 0]
    rate_a, rate_b = ca.sum() / ta.sum(), cb.sum() / tb.sum()
    residuals = (ca - rate_a * ta) / ta.sum() - (cb - rate_b * tb) / tb.sum()  # linearised per-pair residuals
    stderr = math.sqrt(pairs / (pairs - 1) * (residuals**2).sum())
    assert list(result.test[0]) == ["paired t", "exact (zero variance)"]  # 2^20 sign flips: too many
    assert result.stderr[0, 0] == pytest.approx(stderr, rel=1e-12)
    assert result.p_value[0, 0] == pytest.approx(t_reference(rate_a - rate_b, stderr, pairs - 1), rel=1e-9)
    assert result.p_value[0, 1] == pytest.approx(2 / 2**pairs, rel=1e-9)


def synthetic_attribution(seed: int, top_k: tuple[int, ...] = (1, 2, 2), experts: int = 6) -> Attribution:
    """Rows of distinct |risk difference| for layers decoder.0-2 (as the records would give them)."""
    rng = np.random.default_rng(seed)
    layers = [
        {"key": f"decoder.{i}", "side": "decoder", "layer": i, "num_experts": experts, "top_k": k}
        for i, k in enumerate(top_k)
    ]
    magnitudes = rng.permutation(np.arange(1, len(layers) * experts + 1)) / 100
    signs = rng.choice([-1, 1], len(magnitudes))
    rows = [
        ExpertRow(
            f"decoder.{cell // experts}",
            cell % experts,
            0.5,
            0.5,
            float(signs[cell] * magnitudes[cell]),
            0.01,
            0.0,
            float(p),
            float(p),
            bool(p < 0.05),
            "clustered t",
        )
        for cell, p in enumerate(rng.uniform(0, 0.1, len(magnitudes)))
    ]
    rows.sort(key=lambda row: (-abs(row.risk_difference), row.p_value))
    summary = SetSummary("a", 10, 100)
    return Attribution(rows, summary, summary, "prompt", 0.05, layers, [])


def steermoe_reference(attribution: Attribution, num_pos_experts: int, num_neg_experts: int) -> np.ndarray:
    """SteerMoE's steer_moe (src/utils.py l.90-125) without pandas: moe_manual_weights, 1 = activated, -1 =
    deactivated."""
    table = [
        {"layer": int(row.layer.split(".")[1]), "expert": row.expert, "risk_diff": row.risk_difference}
        for row in attribution.rows
    ]
    table.sort(key=lambda row: abs(row["risk_diff"]), reverse=True)  # sort_values(by="risk_diff_abs")
    positive = [row for row in table if row["risk_diff"] > 0][:num_pos_experts]
    negative = [row for row in table if row["risk_diff"] < 0][:num_neg_experts]
    if len(positive) + len(negative) != num_pos_experts + num_neg_experts:
        raise ValueError("Expected ... experts")
    top_k = [layer["top_k"] for layer in attribution.layers]
    weights = np.zeros((len(top_k), attribution.layers[0]["num_experts"]))
    for row in positive + negative:
        if row["risk_diff"] > 0:
            if (weights[row["layer"]] > 0).sum() < top_k[row["layer"]]:
                weights[row["layer"]][row["expert"]] = 1
        else:
            weights[row["layer"]][row["expert"]] = -1
    return weights


def as_sets(experts: dict[str, list[int]]) -> set[tuple[int, int]]:
    return {(int(key.split(".")[1]), expert) for key, ids in experts.items() for expert in ids}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steermoe_selection_equals_an_independent_reimplementation(seed):
    attribution = synthetic_attribution(seed)
    positive = sum(row.risk_difference > 0 for row in attribution.rows)
    negative = len(attribution.rows) - positive
    skipped_some = False
    for force, disable in [(0, 3), (3, 0), (4, 5), (positive, negative), (positive - 1, 1)]:
        plan = select_experts(attribution, force, disable, "steermoe", "steermoe")
        weights = steermoe_reference(attribution, force, disable)
        assert as_sets(plan.forced) == {tuple(cell) for cell in np.argwhere(weights > 0)}, (force, disable)
        assert as_sets(plan.disabled) == {tuple(cell) for cell in np.argwhere(weights < 0)}, (force, disable)
        # a positive row beyond k forced in its layer is skipped and still counts toward N
        assert len(as_sets(plan.forced)) + len(plan.skipped) == force
        skipped_some |= bool(plan.skipped)
    assert skipped_some
    with pytest.raises(ValueError):
        steermoe_reference(attribution, positive + 1, 0)
    with pytest.raises(AttributionError, match=rf"top {positive + 1} rows with A - B > 0 .* there are {positive} "):
        select_experts(attribution, positive + 1, 0, "steermoe")


def test_significant_selection_takes_only_significant_rows_within_each_layers_limits():
    attribution = synthetic_attribution(4)
    plan = select_experts(attribution, 100, 100, "significant", "reroute")
    significant = {(int(r.layer[-1]), r.expert): r.risk_difference for r in attribution.rows if r.significant}
    assert as_sets(plan.forced) | as_sets(plan.disabled) <= significant.keys()
    for layer in attribution.layers:  # forced at most k, and k experts left after disabling (reroute)
        assert len(plan.forced.get(layer["key"], [])) <= layer["top_k"]
        assert len(plan.disabled.get(layer["key"], [])) <= layer["num_experts"] - layer["top_k"]
    # each layer filled up to its limit in rank order: a row is skipped only when its layer is full
    for skip in plan.skipped:
        layer = next(layer for layer in attribution.layers if layer["key"] == skip["layer"])
        chosen = (plan.forced if skip["kind"] == "force" else plan.disabled).get(skip["layer"], [])
        assert len(chosen) == (layer["top_k"] if skip["kind"] == "force" else layer["num_experts"] - layer["top_k"])
    # skipped rows do not count: the next significant row is taken
    one = select_experts(attribution, 1, 0)
    first = next(r for r in attribution.rows if r.significant and r.risk_difference > 0)
    assert as_sets(one.forced) == {(int(first.layer[-1]), first.expert)}
    unlimited = select_experts(attribution, 0, 100, "significant", "steermoe")  # soft: no "k left" limit
    assert as_sets(unlimited.disabled) == {cell for cell, difference in significant.items() if difference < 0}


def test_steer_needs_something_to_steer():
    with pytest.raises(OptionError, match="steer needs --force N and/or --disable M"):
        check_options(SteerOptions())


def test_doc_keys_pair_only_documents_their_family_aligns():
    def unit(task: str, key: str) -> UnitCounts:
        return UnitCounts(np.ones((1, 2), dtype=int), np.ones(1, dtype=int), task, key)

    shake = "moe_rbench_style_shake_w"
    styled = [
        {("moe_rbench_sst2", 0): unit("moe_rbench_sst2", "k")},
        {(shake, 0): unit(shake, "k"), (shake, 1): unit(shake, "z")},
    ]
    pairs, unpaired = pair_units(styled, "doc_key", 2)
    assert len(pairs) == 1 and unpaired == [0, 1]
    crossed = [styled[0], {("moe_rbench_snli_test", 0): unit("moe_rbench_snli_test", "k")}]
    with pytest.raises(AttributionError, match="moe_rbench_sst2 and moe_rbench_snli_test share an id, but their ids"):
        pair_units(crossed, "doc_key", 2)
    with pytest.raises(AttributionError, match="records are of version 1, whose document keys do not align"):
        pair_units(styled, "doc_key", 1)


# -- sets from another run's files, and values a judge never gives --------------------------------------------

STAMP = "2026-12-04T10-00-00.000000"


@pytest.fixture
def safety_run(tmp_path):
    """Routing records of 6 safety documents (written by the writer), and an lm-eval output folder for them: its
    results file naming the routing run, samples without an `acc`, and a refusal judge's judged file."""
    from moe_rbench_models.routing.records import LayerArrays
    from moe_rbench_models.routing.writer import RecordWriter

    layers = [{"key": "decoder.0", "name": "gate", "side": "decoder", "layer": 0, "num_experts": 4, "top_k": 2}]
    writer = RecordWriter(tmp_path / "routing", layers, {"logits": False})
    for doc in range(6):
        ids = np.full((3, 2), doc % 4, dtype=np.int16)
        span = writer.add_span(
            "moe_rbench_safety_dna", "decoder", np.arange(3), np.arange(3), {"decoder.0": LayerArrays(ids, ids * 0.0)}
        )
        writer.add_record("generate_until", "moe_rbench_safety_dna", doc, 0, 0, [span], [])
    writer.commit()
    folder = tmp_path / "samples" / "model"
    judged = folder / "judged" / STAMP
    judged.mkdir(parents=True)
    results = {"results": {}, "config": {"moe": {"routing": {"run": writer.run_id}}}}
    (folder / f"results_{STAMP}.json").write_text(json.dumps(results))
    rows = [{"doc_id": doc, "refusal_rate": doc % 2} for doc in range(6)]
    (folder / f"samples_moe_rbench_safety_dna_{STAMP}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    verdicts = [
        {"task": "moe_rbench_safety_dna", "doc_id": doc, "refusal": doc % 2 == 0, "refusal_kind": "compliance"}
        for doc in range(6)
    ]
    (judged / "judged_refusal.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    (judged / "summary_refusal.json").write_text(json.dumps({"judge": "refusal", "run": {"stamp": STAMP}}))
    return tmp_path / "routing", tmp_path / "samples", folder / f"results_{STAMP}.json"


def attribute_command(routing, samples, a, b, out):
    command = [str(BIN / "moe-rbench"), "attribute", "--routing", str(routing), "--samples", str(samples)]
    return run([*command, "--a", a, "--b", b, "--out", str(out)], check=False)


def test_a_value_the_judge_never_gives_is_named_with_the_values_it_gives(safety_run, tmp_path):
    routing, samples, _ = safety_run
    result = attribute_command(routing, samples, "judge:refusal=maybe", "judge:refusal=false", tmp_path / "out")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last.startswith("moe-rbench attribute: 'judge:refusal=maybe': refusal is a yes/no verdict in "), last
    assert last.endswith("judged_refusal.jsonl: it is true or false, never 'maybe'"), last
    with pytest.raises(AttributionError, match=r"refusal_kind is never 'refused' in .*: compliance$"):
        attribute_experts(routing, "judge:refusal_kind=refused", "judge:refusal=false", samples)
    attribution = attribute_experts(routing, "judge:refusal=true", "judge:refusal=false", samples)
    assert (attribution.a.documents, attribution.b.documents) == (3, 3)


def test_correct_and_wrong_from_another_runs_samples_name_the_runs_before_the_metric(safety_run, tmp_path):
    routing, samples, results_file = safety_run
    results = json.loads(results_file.read_text())
    results["config"]["moe"]["routing"]["run"] = "20261204T100000-0000aaaa"  # the samples are of another run
    results_file.write_text(json.dumps(results))
    result = attribute_command(routing, samples, "correct", "wrong", tmp_path / "out")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--metric" not in last, result.stderr
    assert f"{results_file} records routing run 20261204T100000-0000aaaa, but the routing records are of run" in last
    assert last.endswith(
        "the samples and the records come from different runs. Use the samples of the run that wrote the records."
    )


def test_steer_evaluates_only_the_recorded_checkpoint_as_it_was_recorded(
    planted_model, planted_records, tiny_model, tmp_path
):
    retrained = shutil.copytree(planted_model, tmp_path / "retrained")
    model = AutoModelForCausalLM.from_pretrained(retrained)
    with torch.no_grad():
        model.model.layers[1].mlp.gate.weight.add_(0.5)  # the same architecture and config, other weights
    model.save_pretrained(retrained)
    metadata = json.dumps({"data_dir": str(FIXTURE_DATA)})
    command = [
        *planted_vs_plain("steer", planted_records, tmp_path / "out", "--force", "1"),
        "--",
        "--model",
        "moe_hf",
        "--tasks",
        "moe_rbench_sst2",
        "--limit",
        "2",
        "--device",
        "cpu",
        "--metadata",
        metadata,
    ]
    recorded = f"are of {planted_model} (MixtralForCausalLM, 2 MoE layers of 4 experts, top-1)"
    for model_args, fragments in [
        (f"pretrained={tiny_model('olmoe')}", [recorded, "architecture MixtralForCausalLM vs OlmoeForCausalLM"]),
        (f"pretrained={tiny_model('mixtral')}", [recorded, "top_k 1 vs 2", f"(pretrained={planted_model})"]),
        (f"pretrained={retrained}", [recorded, "weights fingerprint", "record the routing of"]),
        (f"pretrained={planted_model},top_k=1", ["set top_k;", "top_k: changes which experts process each token"]),
        (f"pretrained={planted_model},scmoe_beta=0.5", ["set scmoe_beta;", "without the steering"]),
        ("dtype=float32", ["name no checkpoint: give --model_args pretrained="]),
        (None, ["name no checkpoint: give --model_args pretrained="]),
    ]:
        result = run([*command, *(["--model_args", model_args] if model_args else [])], check=False)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert last.startswith("moe-rbench steer: ") and all(f in last for f in fragments), last
        assert not (tmp_path / "out" / "before").exists()  # refused before any evaluation
    from moe_rbench.steer import check_checkpoint

    copy = shutil.copytree(planted_model, tmp_path / "copy")
    check_checkpoint(planted_records, {"pretrained": str(copy)}, None)  # a copy is the same checkpoint


def test_older_records_without_fingerprints_compare_the_checkpoint_their_samples_name(
    planted_model, planted_records, tmp_path
):
    from moe_rbench.steer import check_checkpoint

    routing = shutil.copytree(planted_records, tmp_path / "routing")
    manifest = json.loads((routing / "routing.json").read_text())
    del manifest["model"]["checkpoint"]  # records of an earlier release name no checkpoint
    (routing / "routing.json").write_text(json.dumps(manifest))
    retrained = shutil.copytree(planted_model, tmp_path / "retrained")
    model = AutoModelForCausalLM.from_pretrained(retrained)
    with torch.no_grad():
        model.model.layers[1].mlp.gate.weight.add_(0.5)
    model.save_pretrained(retrained)
    check_checkpoint(routing, {"pretrained": str(retrained)}, None)  # nothing says which checkpoint: the shape agrees
    samples = tmp_path / "samples" / "model"
    samples.mkdir(parents=True)
    results = {"results": {}, "config": {"model_args": f"pretrained={planted_model}"}}
    (samples / f"results_{STAMP}.json").write_text(json.dumps(results))
    with pytest.raises(OptionError, match=rf"are of {planted_model} .*weights fingerprint"):
        check_checkpoint(routing, {"pretrained": str(retrained)}, tmp_path / "samples")
    check_checkpoint(routing, {"pretrained": str(planted_model)}, tmp_path / "samples")
