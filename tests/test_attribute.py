"""From routing to action: `attribute` finds the experts behind a behaviour, `force_experts` / `disable_experts`
steer them, `steer` re-measures. The model is one where the answer is known: a tiny top-1 Mixtral whose first
router sends the token `@` to expert 3 and no other token there, and whose second router is zeroed (no expert
differs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import BIN, FIXTURE_DATA, evaluate_to, lm_eval_outputs, run
from lm_eval.api.instance import Instance
from scipy.stats import t as student_t
from transformers import AutoModelForCausalLM, AutoTokenizer

from moe_rbench.attribute import (
    AttributionError,
    attribute_experts,
    model_argument,
    select_documents,
    steering_experts,
)
from moe_rbench.judging import judge_samples
from moe_rbench_models import MoEHFLM
from moe_rbench_models.routing import load_manifest, load_records
from moe_rbench_models.tiny import build_tiny_model
from moe_rbench_tasks.judges import load_judge

PLANTED = "@"
WORDS = ["the", "film", "was", "a", "gentle", "funny", "story", "about", "old", "friends", "who", "meet", "again",
         "after", "many", "years", "on", "a", "quiet", "road"]  # fmt: skip


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
    assert steering_experts(attribution, 5, "force") == {"decoder.0": [3]}


@pytest.mark.equivalence
def test_rates_and_standard_errors_equal_an_independent_computation(planted_records):
    attribution = attribute_experts(planted_records, "planted", "plain")
    per_doc = {"planted": [], "plain": []}
    for record in load_records(planted_records):
        ids = record.layers["decoder.0"].context_ids
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
    # Student's t with (fewer documents - 1) degrees of freedom
    t_value = (rates[0] - rates[1]) / math.sqrt(sum(variances))
    assert row.p_value == pytest.approx(2 * student_t.sf(t_value, 11), rel=1e-6)


def test_the_model_arguments_steer_the_expert(planted_model, planted_records, tmp_path):
    from lm_eval._cli.utils import key_val_to_dict

    attribution = attribute_experts(planted_records, "planted", "plain")
    forced = steering_experts(attribution, 1, "force")
    assert forced == {"decoder.0": [3]}
    argument = model_argument(attribution, forced, "force")
    assert argument == 'force_experts="0:3"'
    options = key_val_to_dict(f"pretrained={planted_model},{argument}")  # as lm_eval --model_args reads it
    with MoEHFLM(device="cpu", routing_out=str(tmp_path / "forced"), **options) as lm:
        lm.loglikelihood([Instance("loglikelihood", {}, (text(1, False), " end"), 0, metadata=("plain", 0, 1))])
    (record,) = load_records(tmp_path / "forced")
    assert (record.layers["decoder.0"].context_ids == 3).any(-1).all()  # every token, none of them an @
    unforced = [r for r in load_records(planted_records) if r.task == "plain"]
    assert not any((r.layers["decoder.0"].context_ids == 3).any() for r in unforced)


def test_the_attribute_command_writes_table_figure_and_model_arguments(planted_records, tmp_path):
    result = run(
        [str(BIN / "moe-rbench"), "attribute", "--routing", str(planted_records), "--a", "planted", "--b", "plain",
         "--top", "1", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    first_row = next(line for line in result.stdout.splitlines() if line.startswith("| decoder"))
    assert first_row.startswith("| decoder.0 | 3 | 0.0436 | 0.0000 | +0.0436 |")
    written = json.loads((tmp_path / "out" / "attribution.json").read_text())
    assert (written["rows"][0]["layer"], written["rows"][0]["expert"]) == ("decoder.0", 3)
    assert written["model_args"] == {"disable": 'disable_experts="0:3"', "force": 'force_experts="0:3"'}
    assert (tmp_path / "out" / "attribution.png").stat().st_size > 1000
    assert (tmp_path / "out" / "attribution.csv").read_text().splitlines()[1].startswith("decoder.0,3,")


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


def test_a_multiple_choice_context_counts_once_and_layers_without_span_tokens_are_not_tested(tiny_model, tmp_path):
    requests = [
        Instance("loglikelihood", {}, (text(i, False) + " is it", choice), c, metadata=(task, i, 1))
        for task in ("x", "y")
        for i in range(4)
        for c, choice in enumerate([" yes", " no", " maybe"])
    ]
    with MoEHFLM(pretrained=str(tiny_model("switch_transformers")), device="cpu", routing_out=str(tmp_path)) as lm:
        lm.loglikelihood(requests)
    contexts = {(r.task, r.doc_id): len(r.layers["encoder.1"].context_ids) for r in load_records(tmp_path)}
    prompt = attribute_experts(tmp_path, "x", "y")
    assert prompt.a.tokens == sum(n for (task, _), n in contexts.items() if task == "x")  # not three times that
    # the prompt reaches the encoder only: decoder layers are left out of the tests (and of the q-values)
    assert prompt.untested == ["decoder.1"] and {row.layer for row in prompt.rows} == {"encoder.1"}
    continuation = attribute_experts(tmp_path, "x", "y", span="continuation")
    assert continuation.untested == ["encoder.1"] and {row.layer for row in continuation.rows} == {"decoder.1"}


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


def test_steer_forces_the_planted_expert_and_writes_the_before_after_table(planted_model, planted_records, tmp_path):
    metadata = json.dumps({"data_dir": str(FIXTURE_DATA)})
    lm_eval_args = ["--model", "moe_hf", "--model_args", f"pretrained={planted_model}", "--tasks", "moe_rbench_sst2",
                    "--limit", "10", "--device", "cpu", "--metadata", metadata]  # fmt: skip
    command = [str(BIN / "moe-rbench"), "steer", "--routing", str(planted_records), "--a", "planted", "--b", "plain",
               "--top", "3", "--direction", "force", "--out", str(tmp_path / "out"), "--", *lm_eval_args]  # fmt: skip
    result = run(command, timeout=600)
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
    command = [str(BIN / "moe-rbench"), "steer", "--routing", str(planted_records), "--a", "planted", "--b", "plain",
               "--out", str(tmp_path), "--", "--model", "hf", "--tasks", "moe_rbench_sst2"]  # fmt: skip
    result = run(command, check=False)
    assert result.returncode == 2 and "steer evaluates with `--model moe_hf`" in result.stderr
    for model_args, message in [
        ('pretrained=x,force_experts="0:1"', "set force_experts; steer adds the intervention itself"),
        ('{"pretrained": "x", "routing_out": "r"}', "set routing_out; steer adds"),
        ("pretrained", "--model_args 'pretrained': expected `key=value`"),
    ]:
        result = run([*command[:-4], "--model", "moe_hf", "--model_args", model_args], check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
