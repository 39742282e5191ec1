"""Routing in `moe_hf`: discovery, capture (checked against transformers' own router outputs), interventions."""

from __future__ import annotations

import tracemalloc

import lm_eval
import numpy as np
import pytest
import torch
from helpers import CAUSAL_MOE, FIXTURE_DATA, MOE
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

import moe_rbench_tasks
from moe_rbench_models import MoEHFLM
from moe_rbench_models.internals import InternalsChanged
from moe_rbench_models.routing import RouterAdapter, find_moe_layers, load_records, register_router
from moe_rbench_models.routing.hooks import RoutingHooks
from moe_rbench_models.routing.interventions import plan_interventions, scoring_space
from moe_rbench_models.routing.records import RoutingDirectoryError
from moe_rbench_models.tiny import build_tiny_model
from moe_rbench_tasks.data import MissingDataError

CONTEXT = "Given the sentences: a gentle , funny film\n what is the sentiment of this sentence ? "
PROMPTS = ["Q: What is the capital of France?\nA:", "### Instruction: Explain why the sky is blue.", "lol"]


def scoring_requests():
    choices = [
        Instance("loglikelihood", {}, (CONTEXT, word), index, metadata=("mc", 0, 1))
        for index, word in enumerate(["negative", "positive"])
    ]
    return choices + [
        Instance("loglikelihood", {}, ("Q: What is the capital of France?\nA:", " Paris"), 0, metadata=("qa", 1, 1))
    ]


def generation_requests(max_gen_toks=6):
    kwargs = {"until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False}
    return [
        Instance("generate_until", {}, (prompt, dict(kwargs)), 0, metadata=("gen", i, 1))
        for i, prompt in enumerate(PROMPTS)
    ]


def rolling_requests():
    return [
        Instance(
            "loglikelihood_rolling",
            {},
            ("The quick brown fox jumps over the lazy dog, again and again.",),
            0,
            metadata=("roll", 0, 1),
        )
    ]


def run_requests(path, out, **lm_kwargs):
    """Every request type through moe_hf with routing_out; the answers and the records by request."""
    lm = MoEHFLM(pretrained=str(path), device="cpu", routing_out=str(out), **lm_kwargs)
    answers = {
        "loglikelihood": lm.loglikelihood(scoring_requests()),
        "generate_until": lm.generate_until(generation_requests()),
        "loglikelihood_rolling": lm.loglikelihood_rolling(rolling_requests()),
    }
    lm.close()
    records = {(r.request_type, r.task, r.doc_id, r.request_index): r for r in load_records(out)}
    return lm, answers, records


def used_experts(records) -> set[int]:
    ids = [
        np.concatenate([layer.context_ids.ravel(), layer.continuation_ids.ravel()])
        for record in records.values()
        for layer in record.layers.values()
    ]
    return set(np.concatenate(ids).tolist()) - {-1}


def processed_tokens(record) -> list[int]:
    """The tokens a causal request fed the model, in position order."""
    return record.context_tokens.tolist() + record.continuation_inputs.tolist()


# -- discovery ----------------------------------------------------------------------------------------------


@pytest.mark.equivalence
def test_discovery_reads_transformers_declarations(tiny_model):
    dbrx = find_moe_layers(AutoModelForCausalLM.from_pretrained(tiny_model("dbrx")))
    assert all(layer.top_k_owner is layer.block and layer.top_k == 2 for layer in dbrx)  # DBRX's k is on the block
    llama4 = find_moe_layers(AutoModelForCausalLM.from_pretrained(tiny_model("llama4_text")))
    assert not any(layer.reads_experts_call for layer in llama4)  # Llama4 hands experts dense scores
    qwen2 = find_moe_layers(AutoModelForCausalLM.from_pretrained(tiny_model("qwen2_moe")))
    assert [layer.name for layer in qwen2] == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    switch = find_moe_layers(AutoModelForSeq2SeqLM.from_pretrained(tiny_model("switch_transformers")))
    assert [layer.key for layer in switch] == ["encoder.1", "decoder.1"] and switch[0].top_k_owner is None


class ToyGate(nn.Module):
    """A gate outside transformers' contract (returns a dict), as remote-code MoE models have their own."""

    def __init__(self, hidden, experts, k):
        super().__init__()
        self.proj = nn.Linear(hidden, experts, bias=False)
        self.k = k

    def forward(self, hidden):
        logits = self.proj(hidden)
        weights, ids = torch.softmax(logits, dim=-1).topk(self.k, dim=-1)
        return {"ids": ids, "weights": weights, "logits": logits}


class ToyMoE(nn.Module):
    def __init__(self, hidden=8, experts=4, k=2):
        super().__init__()
        self.gates = nn.ModuleList(ToyGate(hidden, experts, k) for _ in range(2))
        self.experts = nn.ModuleList(nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(experts)) for _ in range(2))

    def forward(self, hidden):
        for gate, experts in zip(self.gates, self.experts, strict=True):
            routing = gate(hidden)
            outputs = torch.stack(
                [torch.stack([experts[e](h) for e in row]) for h, row in zip(hidden, routing["ids"], strict=True)]
            )
            hidden = hidden + (outputs * routing["weights"].unsqueeze(-1)).sum(1)
        return hidden


def test_a_registered_adapter_makes_a_custom_gate_recordable_and_steerable():
    adapter = RouterAdapter(
        router_class=ToyGate,
        read=lambda gate, inputs, output: (output["ids"], output["weights"]),
        logits=lambda gate, inputs, output: output["logits"],
        num_experts=lambda gate: gate.proj.out_features,
        top_k=lambda gate: gate.k,
        top_k_attribute="k",
    )
    with register_router(adapter):
        recordable_and_steerable()
    assert find_moe_layers(ToyMoE()) == []  # the registration is gone with the block


def recordable_and_steerable():
    torch.manual_seed(0)
    model, hidden = ToyMoE(), torch.randn(16, 8)
    layers = find_moe_layers(model)
    assert [(layer.key, layer.num_experts, layer.top_k) for layer in layers] == [
        ("decoder.0", 4, 2),
        ("decoder.1", 4, 2),
    ]

    hooks = RoutingHooks(layers, {}, record=True, keep_logits=True).install()
    model(hidden)
    first = hooks.take()["decoder.0"][0]
    hooks.remove()
    expected = torch.softmax(model.gates[0].proj(hidden), -1).topk(2, dim=-1)
    assert torch.equal(first.ids.long(), expected.indices)
    assert torch.allclose(first.logits, model.gates[0].proj(hidden))

    plan = plan_interventions(layers, top_k=1, disable_experts="*:0,1")
    hooks = RoutingHooks(layers, plan, record=True, keep_logits=False).install()
    model(hidden)
    for calls in hooks.take().values():
        assert calls[0].ids.shape == (16, 1) and set(calls[0].ids.flatten().tolist()) <= {2, 3}
    hooks.remove()
    assert model.gates[0].k == 2  # removing the hooks restores the model


def test_routing_options_on_a_dense_model_fail_clearly(tiny_model, tmp_path):
    for option in ({"routing_out": str(tmp_path)}, {"top_k": 1}, {"disable_experts": "*:0"}):
        with pytest.raises(
            ValueError, match=r"needs a Mixture-of-Experts model, but no MoE layer was found in LlamaForCausalLM"
        ):
            MoEHFLM(pretrained=str(tiny_model("llama")), device="cpu", **option)


# -- capture ------------------------------------------------------------------------------------------------


@pytest.mark.equivalence
@pytest.mark.parametrize("architecture", CAUSAL_MOE)
def test_captured_logits_equal_output_router_logits(tiny_model, tmp_path, architecture):
    path = tiny_model(architecture)
    _, _, records = run_requests(path, tmp_path / "routing", routing_logits=True, batch_size=3)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert {request_type for request_type, *_ in records} == {
        "loglikelihood",
        "generate_until",
        "loglikelihood_rolling",
    }
    for key, record in records.items():
        with torch.no_grad():
            expected = model(torch.tensor([processed_tokens(record)]), output_router_logits=True).router_logits
        assert len(expected) == len(record.layers) == 2
        for (layer, routing), layer_logits in zip(record.layers.items(), expected, strict=True):
            captured = np.concatenate([routing.context_logits, routing.continuation_logits])
            np.testing.assert_allclose(
                captured, layer_logits.float().numpy(), rtol=0, atol=2e-5, err_msg=f"{key} {layer}"
            )


@pytest.mark.equivalence
@pytest.mark.parametrize("architecture", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
def test_softmax_routers_ids_and_weights_are_top_k_of_softmax_of_logits(tiny_model, tmp_path, architecture):
    path = tiny_model(architecture)
    _, _, records = run_requests(path, tmp_path / "routing", routing_logits=True, batch_size=2)
    renormalized = architecture == "mixtral" or AutoModelForCausalLM.from_pretrained(path).config.norm_topk_prob
    for record in records.values():
        for routing in record.layers.values():
            logits = torch.from_numpy(np.concatenate([routing.context_logits, routing.continuation_logits]))
            top = torch.softmax(logits, dim=-1).topk(2, dim=-1)
            weights = top.values / top.values.sum(-1, keepdim=True) if renormalized else top.values
            ids = np.concatenate([routing.context_ids, routing.continuation_ids])
            assert np.array_equal(ids, top.indices.numpy())
            np.testing.assert_allclose(
                np.concatenate([routing.context_weights, routing.continuation_weights]),
                weights.numpy(),
                rtol=2e-3,
                atol=1e-3,
            )  # stored as float16


@pytest.mark.parametrize("architecture", ["qwen2_moe", "switch_transformers"])
def test_records_do_not_depend_on_batch_size(tiny_model, tmp_path, architecture):
    """Sorting, padding and the multiple-choice logits cache leave every request's routing unchanged."""
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    runs = []
    for batch_size in (1, 8):
        out = tmp_path / f"batch{batch_size}"
        lm = MoEHFLM(
            pretrained=str(tiny_model(architecture)), device="cpu", batch_size=batch_size, routing_out=str(out)
        )
        lm_eval.simple_evaluate(
            model=lm, tasks=["moe_rbench_sst2", "moe_rbench_style_tweet_p06"], task_manager=manager, limit=8
        )
        if lm.backend == "causal":  # lm-eval's seq2seq generation length depends on the batch's padded width
            lm.generate_until(generation_requests())
        lm.loglikelihood_rolling(rolling_requests())
        lm.close()  # simple_evaluate published the records; publish those of the calls made since
        runs.append({(r.request_type, r.task, r.doc_id, r.request_index): r for r in load_records(out)})
    one, eight = runs
    assert one.keys() == eight.keys() and len(one) == 2 * 16 + (3 if architecture != "switch_transformers" else 0) + 1
    for key in one:
        assert np.array_equal(one[key].context_tokens, eight[key].context_tokens)
        assert np.array_equal(one[key].continuation_tokens, eight[key].continuation_tokens)
        for layer in one[key].layers:
            a, b = one[key].layers[layer], eight[key].layers[layer]
            for name in ("context_ids", "continuation_ids", "context_weights", "continuation_weights"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), (key, layer, name)


def test_multiple_choice_context_is_stored_once_and_scored_tokens_have_one_entry_each(tiny_model, tmp_path):
    lm, _, records = run_requests(tiny_model("mixtral"), tmp_path / "routing", batch_size=4)
    negative, positive = records[("loglikelihood", "mc", 0, 0)], records[("loglikelihood", "mc", 0, 1)]
    assert negative.context_spans == positive.context_spans  # one stored copy
    context, continuation = lm._encode_pair(CONTEXT, "negative")
    assert negative.continuation_tokens.tolist() == continuation
    assert negative.context_tokens.tolist() == context[:-1]  # the last context position scores the continuation
    assert negative.continuation_inputs.tolist() == context[-1:] + continuation[:-1]
    rolling = records[("loglikelihood_rolling", "roll", 0, 0)]
    tokens = lm.tok_encode(rolling_requests()[0].args[0])
    assert rolling.continuation_tokens.tolist() == tokens and len(rolling.context_tokens) == 0


@pytest.mark.parametrize("architecture", ["olmoe", "switch_transformers"])
def test_generation_records_cover_prompt_and_every_generated_token(tiny_model, tmp_path, architecture):
    path = tiny_model(architecture)
    lm, answers, records = run_requests(path, tmp_path / "routing", batch_size=3, routing_logits=True)
    seq2seq = architecture == "switch_transformers"
    auto_class = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = auto_class.from_pretrained(path)
    for index, (prompt, text) in enumerate(zip(PROMPTS, answers["generate_until"], strict=True)):
        record = records[("generate_until", "gen", index, 0)]
        prompt_tokens = lm.tok_encode(prompt)
        generated = record.continuation_tokens.tolist()
        assert len(generated) > 0 and lm.tok_decode(generated).startswith(text)
        # one entry per generated token; every prompt token is an input once
        assert [len(r.continuation_ids) for r in record.layers.values()] == [len(generated)] * len(
            record.layers
        ) or seq2seq
        if seq2seq:
            assert record.context_tokens.tolist() == prompt_tokens
            assert len(record.layers["encoder.1"].context_ids) == len(prompt_tokens)
            assert len(record.layers["decoder.1"].continuation_ids) == len(generated)
            with torch.no_grad():
                out = model(
                    input_ids=torch.tensor([prompt_tokens]),
                    decoder_input_ids=torch.tensor([record.continuation_inputs.tolist()]),
                    output_router_logits=True,
                )
            np.testing.assert_allclose(
                record.layers["encoder.1"].context_logits,
                out.encoder_router_logits[0].reshape(-1, 4).numpy(),
                atol=2e-5,
            )
            np.testing.assert_allclose(
                record.layers["decoder.1"].continuation_logits,
                out.decoder_router_logits[0].reshape(-1, 4).numpy(),
                atol=2e-5,
            )
        else:
            assert processed_tokens(record) == prompt_tokens + generated[:-1]
            with torch.no_grad():  # the step-by-step capture equals one forward over the finished sequence
                expected = model(torch.tensor([processed_tokens(record)]), output_router_logits=True).router_logits
            for routing, layer_logits in zip(record.layers.values(), expected, strict=True):
                captured = np.concatenate([routing.context_logits, routing.continuation_logits])
                np.testing.assert_allclose(captured, layer_logits.numpy(), atol=2e-5)


def test_switch_capacity_dropped_tokens_are_marked(tiny_model, tmp_path):
    path = build_tiny_model("switch_transformers", tmp_path / "switch_capacity_1", expert_capacity=1)
    _, _, records = run_requests(path, tmp_path / "routing", batch_size=2)
    dropped_total = 0
    for record in records.values():
        encoder = record.layers["encoder.1"]
        if not len(encoder.context_ids):
            continue
        ids = encoder.context_ids[:, 0].tolist()
        # capacity 1 per sequence: a token is dropped exactly when an earlier token chose the same expert
        assert encoder.context_dropped.tolist() == [expert in ids[:i] for i, expert in enumerate(ids)]
        dropped_total += int(encoder.context_dropped.sum())
    assert dropped_total > 0


def test_results_config_has_routing_summary_and_interventions(tiny_model, tmp_path):
    lm = MoEHFLM(
        pretrained=str(tiny_model("qwen2_moe")),
        device="cpu",
        batch_size=4,
        routing_out=str(tmp_path / "r"),
        disable_experts="1:2",
        disable_mode="drop",
    )
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    results = lm_eval.simple_evaluate(model=lm, tasks=["moe_rbench_sst2"], task_manager=manager, limit=6)
    moe = results["config"]["moe"]
    assert moe["interventions"]["per_layer"] == {"decoder.1": {"top_k": None, "disabled": [2], "forced": []}}
    summary = moe["routing"]["summary"]["moe_rbench_sst2"]
    loads = {}
    for record in load_records(tmp_path / "r"):
        for key, routing in record.layers.items():
            spans = {
                ("context", record.context_spans): routing.context_ids,
                ("continuation", record.continuation_spans): routing.continuation_ids,
            }
            loads.setdefault(key, {}).update(spans)
    for key, layer_summary in summary.items():
        counts = np.bincount(np.concatenate([ids.ravel() for ids in loads[key].values()]), minlength=4)
        np.testing.assert_allclose(layer_summary["load"], counts / counts.sum(), atol=1e-6)
        assert 0 < layer_summary["load_entropy"] <= 1 and layer_summary["capacity_drop_rate"] is None
        assert layer_summary["load_cv"] == pytest.approx(counts.std() / counts.mean(), abs=1e-5)


# -- interventions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", MOE)
def test_reroute_never_uses_a_disabled_expert_and_changes_outputs(tiny_model, tmp_path, architecture):
    path = tiny_model(architecture)
    _, baseline, before = run_requests(path, tmp_path / "before", batch_size=2)
    _, rerouted, after = run_requests(path, tmp_path / "after", batch_size=2, disable_experts="*:0")
    assert 0 in used_experts(before) and 0 not in used_experts(after)
    assert rerouted["loglikelihood"] != baseline["loglikelihood"]


def least_used_expert(records, num_experts: int) -> int:
    ids = np.concatenate(
        [
            np.concatenate([layer.context_ids.ravel(), layer.continuation_ids.ravel()])
            for r in records.values()
            for layer in r.layers.values()
        ]
    )
    return int(np.argmin(np.bincount(ids[ids >= 0], minlength=num_experts)))


@pytest.mark.parametrize("architecture", CAUSAL_MOE)
def test_force_puts_the_expert_in_every_tokens_top_k_and_changes_outputs(tiny_model, tmp_path, architecture):
    path = tiny_model(architecture)
    lm, baseline, before = run_requests(path, tmp_path / "before", batch_size=2)
    expert = least_used_expert(before, lm.moe_layers[0].num_experts)
    _, forced, after = run_requests(path, tmp_path / "after", batch_size=2, force_experts=f"*:{expert}")
    for record in after.values():
        for routing in record.layers.values():
            for part in ("context", "continuation"):
                assert (getattr(routing, f"{part}_ids") == expert).any(-1).all(), (architecture, part)
    assert forced["loglikelihood"] != baseline["loglikelihood"]


def steermoe_edit(logits: torch.Tensor, forced: list[int], lowered: list[int]) -> torch.Tensor:
    """SteerMoE's router edit, as written in adobe-research/SteerMoE@0c7e6b5 src/modeling_vllm/olmoe.py l.117-123."""
    router_logits = torch.nn.functional.log_softmax(logits, dim=-1)
    max_per_tok = router_logits.max(dim=-1).values.unsqueeze(-1)
    min_per_tok = router_logits.min(dim=-1).values.unsqueeze(-1)
    router_logits[:, forced] = max_per_tok + 0.01
    router_logits[:, lowered] = min_per_tok - 0.01
    return router_logits


def fused_moe_routing(architecture: str, scores: torch.Tensor, k: int, config) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert ids and weights vLLM's fused MoE derives from router scores in SteerMoE's model files: softmax over
    the experts, top-k, renormalised where the model renormalises (Mixtral always, OLMoE and Qwen3 by
    norm_topk_prob), OLMoE and Qwen3 rounding the weights to the scores' dtype as transformers' routers do; GPT-OSS:
    top-k of the scores, then a softmax over those k (in the scores' dtype, as transformers' GptOssTopKRouter)."""
    if architecture == "gpt_oss":
        top, ids = torch.topk(scores, k, dim=-1)
        return ids, torch.softmax(top, dim=-1)
    top, ids = torch.topk(torch.softmax(scores.float(), dim=-1), k, dim=-1)
    if architecture == "mixtral" or getattr(config, "norm_topk_prob", False):
        top = top / top.sum(-1, keepdim=True)
    return ids, top if architecture == "mixtral" else top.to(scores.dtype)


def routing_used(model, layer_index: int, intervention: dict, tokens: list[int]):
    """(router input, expert ids, expert weights) handed to the experts of one MoE layer, under an intervention."""
    layers = find_moe_layers(model)
    hooks = RoutingHooks(layers, plan_interventions(layers, **intervention), False, False).install()
    seen = {}

    def keep(name, value) -> None:
        seen.setdefault(name, value)

    layer = layers[layer_index]
    handles = [
        layer.router.register_forward_hook(lambda module, args, output: keep("hidden", args[0])),
        layer.block.experts.register_forward_pre_hook(lambda module, args: keep("used", args[1:3])),
    ]
    try:
        with torch.no_grad():
            model(torch.tensor([tokens]))
    finally:
        hooks.remove()
        for handle in handles:
            handle.remove()
    return seen["hidden"], *seen["used"]


def peaked(architecture: str, path, dtype: torch.dtype):
    """The tiny model with its routers' weights scaled up: logits of a few units, as in trained routers, where an edit
    on raw logits and SteerMoE's edit on log-probabilities round differently in bfloat16."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    with torch.no_grad():
        for layer in find_moe_layers(model):
            layer.router.weight.mul_(40)
    return model


def by_expert(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = ids.argsort(-1)
    return ids.gather(-1, order), weights.gather(-1, order).float()


@pytest.mark.equivalence
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(
    ("architecture", "intervention", "forced", "lowered"),
    [
        ("mixtral", {"force_experts": "0:3,1"}, [1, 3], []),
        ("olmoe", {"force_experts": "0:2"}, [2], []),
        ("qwen3_moe", {"force_experts": "0:0"}, [0], []),
        ("gpt_oss", {"force_experts": "0:3"}, [3], []),
        ("olmoe", {"force_experts": "0:1", "disable_experts": "0:0,3", "disable_mode": "steermoe"}, [1], [0, 3]),
        ("mixtral", {"disable_experts": "0:0,1,2", "disable_mode": "steermoe"}, [], [0, 1, 2]),
    ],
    ids=["mixtral-force", "olmoe-force", "qwen3-force", "gpt_oss-force", "olmoe-both", "mixtral-lower-3-of-4"],
)
def test_steered_routing_equals_steermoe_log_softmax_edit(
    tiny_model, architecture, intervention, forced, lowered, dtype
):
    """force_experts and disable_mode=steermoe give the routing SteerMoE's own edit gives, in float32 and in
    bfloat16 (the edit computed in the router logits' dtype, as SteerMoE computes it)."""
    model = peaked(architecture, tiny_model(architecture), dtype)
    tokens = [5, 17, 42, 7, 99, 3, 250, 11]
    hidden, ids, weights = routing_used(model, 0, intervention, tokens)
    layer = find_moe_layers(model)[0]
    logits = torch.nn.functional.linear(
        hidden.reshape(-1, hidden.shape[-1]), layer.router.weight, getattr(layer.router, "bias", None)
    )
    reference_ids, reference_weights = fused_moe_routing(
        architecture, steermoe_edit(logits, forced, lowered), layer.top_k, model.config
    )
    got, expected = by_expert(ids, weights), by_expert(reference_ids, reference_weights)
    assert torch.equal(got[0], expected[0])
    assert all((got[0] == expert).any(-1).all() for expert in forced)
    torch.testing.assert_close(got[1], expected[1], **({"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_forced_deepseek_v3_keeps_its_sigmoid_weights(tiny_model, dtype):
    """DeepSeek-V3 scores experts by a sigmoid (SteerMoE covers no such router): the forced expert's logit is the
    token's highest plus 0.01 and is selected (with the best expert of its group); every weight is the router's own
    sigmoid rule on those logits, normalised and scaled."""
    model = peaked("deepseek_v3", tiny_model("deepseek_v3"), dtype)
    hidden, ids, weights = routing_used(model, 1, {"force_experts": "1:6"}, [5, 17, 42, 7, 99, 3, 250, 11])
    router = find_moe_layers(model)[1].router
    logits = torch.nn.functional.linear(hidden.reshape(-1, hidden.shape[-1]).float(), router.weight.float())
    logits[:, 6] = logits.max(-1).values + 0.01
    scores = logits.sigmoid()
    in_group = (scores + router.e_score_correction_bias)[:, 4:].clone()  # expert 6 is in group 2 (experts 4-7)
    in_group[:, 2] = float("-inf")
    best_other = in_group.argmax(-1) + 4
    expected_ids = torch.stack([best_other, torch.full_like(best_other, 6)], -1)
    picked = scores.gather(1, expected_ids)
    expected_weights = picked / picked.sum(-1, keepdim=True) * router.routed_scaling_factor
    got, expected = by_expert(ids, weights), by_expert(expected_ids, expected_weights)
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], atol=1e-6, rtol=1e-5)


def test_scoring_space_follows_the_router_logits_to_softmax_or_sigmoid(tiny_model):
    """SteerMoE's log-probability edit where experts are scored by a softmax of the logits; the raw logits where
    they are scored by a sigmoid (DeepSeek-V3, Llama 4), whose weights log-probabilities would change."""
    for architecture in CAUSAL_MOE:
        model = AutoModelForCausalLM.from_pretrained(tiny_model(architecture))
        spaces = {scoring_space(layer) for layer in find_moe_layers(model)}
        assert spaces == {"logits" if architecture in ("deepseek_v3", "llama4_text") else "log_softmax"}, architecture


def test_steermoe_disable_uses_disabled_experts_only_when_fewer_than_k_are_left(tiny_model):
    """SteerMoE's deactivation ranks experts last without removing them: with 3 of 4 experts lowered and k=2 every
    token takes the enabled one and one lowered one; hard removal (reroute) refuses the same request."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model("mixtral")).eval()
    _, ids, _ = routing_used(model, 0, {"disable_experts": "0:0,1,2", "disable_mode": "steermoe"}, [5, 17, 42, 7])
    assert (ids == 3).any(-1).all() and ((ids != 3).sum(-1) == 1).all()
    with pytest.raises(ValueError, match="rerouting needs at least k enabled experts"):
        plan_interventions(find_moe_layers(model), disable_experts="0:0,1,2")


def test_a_router_the_edit_cannot_reach_stops_the_run_instead_of_steering_nothing(tiny_model):
    """A router whose logits are not a `linear` call (here: a matmul) is beyond the edit: forcing stops when the
    block is probed, disabling when the router picks a disabled expert."""
    model = peaked("mixtral", tiny_model("mixtral"), torch.float32)
    router = find_moe_layers(model)[0].router

    def matmul_forward(hidden_states):
        logits = torch.matmul(hidden_states.reshape(-1, router.hidden_dim), router.weight.T)
        probs = torch.softmax(logits.float(), -1)
        top, ids = torch.topk(probs, router.top_k, -1)
        return logits, top / top.sum(-1, keepdim=True), ids

    router.forward = matmul_forward
    with pytest.raises(InternalsChanged, match="applies neither softmax nor sigmoid to its router logits"):
        routing_used(model, 0, {"force_experts": "0:1"}, [5, 17, 42, 7])
    busiest = int(routing_used(model, 0, {}, [5, 17, 42, 7])[1].flatten().mode().values)
    with pytest.raises(
        RuntimeError,
        match=rf"Disabling failed in layer decoder.0: MixtralTopKRouter selected disabled expert {busiest}",
    ):
        routing_used(model, 0, {"disable_experts": f"0:{busiest}"}, [5, 17, 42, 7])


def test_drop_keeps_routing_and_zeroes_weights(tiny_model, tmp_path):
    path = tiny_model("mixtral")
    _, baseline, before = run_requests(path, tmp_path / "before", batch_size=2)
    _, dropped, after = run_requests(path, tmp_path / "drop", batch_size=2, disable_experts="*:0", disable_mode="drop")
    _, _, renormalized = run_requests(
        path, tmp_path / "renorm", batch_size=2, disable_experts="*:0", disable_mode="drop", drop_renormalize=True
    )
    assert dropped["loglikelihood"] != baseline["loglikelihood"]
    for key in before:  # the first MoE layer sees unchanged hidden states: same routing, new weights
        a, b, c = (records[key].layers["decoder.0"] for records in (before, after, renormalized))
        ids, weights = a.context_ids.astype(int), a.context_weights.astype(np.float32)
        assert np.array_equal(b.context_ids, a.context_ids) and np.array_equal(c.context_ids, a.context_ids)
        np.testing.assert_allclose(b.context_weights, np.where(ids == 0, 0, weights), atol=1e-3)
        kept = ~(ids == 0).all(-1)  # tokens with an enabled expert left keep their total weight
        np.testing.assert_allclose(c.context_weights.astype(np.float32).sum(-1)[kept], weights.sum(-1)[kept], atol=2e-3)


def test_top_k_overall_and_per_layer(tiny_model, tmp_path):
    path = tiny_model("olmoe")
    _, baseline, _ = run_requests(path, tmp_path / "base", batch_size=2)
    _, one, records = run_requests(path, tmp_path / "k1", batch_size=2, top_k=1)
    assert {layer.context_ids.shape[1] for r in records.values() for layer in r.layers.values()} == {1}
    assert one["loglikelihood"] != baseline["loglikelihood"]
    _, _, mixed = run_requests(path, tmp_path / "mixed", batch_size=2, top_k="0:1;1:3")
    record = next(iter(mixed.values()))
    assert record.layers["decoder.0"].context_ids.shape[1] == 1 and record.layers["decoder.1"].context_ids.shape[1] == 3


@pytest.mark.parametrize(
    ("architecture", "options", "message"),
    [
        (
            "switch_transformers",
            {"top_k": 2},
            r"top_k cannot be changed for layer encoder\.1: SwitchTransformersTop1Router "
            r"routes each token to a fixed number of experts \(1\)",
        ),
        ("phimoe", {"top_k": 1}, r"top_k cannot be changed .* PhimoeTopKRouter"),
        ("mixtral", {"top_k": 5}, r"top_k for layer decoder\.0 must be between 1 and 4, got 5"),
        ("deepseek_v3", {"top_k": 5}, r"must be between 1 and 4"),  # grouped top-k: 1 kept group of 4
        ("mixtral", {"disable_experts": "*:4"}, r"layer decoder\.0 has experts 0-3; got \[4\]"),
        ("mixtral", {"disable_experts": "7:0"}, r"Layer '7' is not an MoE layer of this model; MoE layers: 0, 1"),
        ("switch_transformers", {"disable_experts": "1:0"}, r"Layer '1' is ambiguous .* encoder\.1, decoder\.1"),
        ("mixtral", {"disable_experts": "*:0,1,2"}, r"layer decoder\.0 would keep 1 experts for top-k 2"),
        ("mixtral", {"disable_experts": "*3"}, r"expected 'LAYER:VALUE' parts"),
        ("mixtral", {"disable_experts": "*:x"}, r"'x' is not an integer"),
        (
            "mixtral",
            {"disable_experts": "*:0", "disable_mode": "mask"},
            r"disable_mode must be one of reroute, steermoe, drop",
        ),
        (
            "mixtral",
            {"disable_experts": "*:0", "drop_renormalize": True},
            r"drop_renormalize applies to disable_mode=drop",
        ),
        ("mixtral", {"routing_logits": True}, r"routing_logits=true needs routing_out"),
        ("mixtral", {"force_experts": "*:1,2,3"}, r"layer decoder\.0 selects 2 experts per token, so at most 2 can be"),
        ("mixtral", {"force_experts": "0:4"}, r"force_experts: layer decoder\.0 has experts 0-3; got \[4\]"),
        ("mixtral", {"force_experts": "0:1,2", "scmoe_beta": 0.5}, r"SCMoE's weak pass routes each token to scmoe_wea"),
        ("switch_transformers", {"force_experts": "encoder.1:0"}, r"gives each expert a capacity of \d+ tokens"),
        ("deepseek_v3", {"force_experts": "*:0,7", "top_k": 2}, r"lie in 2 groups \(\[0, 1\]\)"),
        (
            "mixtral",
            {"force_experts": "0:1", "disable_experts": "*:1"},
            r"layer decoder\.0: experts \[1\] are both disabled and forced",
        ),
    ],
)
def test_invalid_routing_options_fail_clearly(tiny_model, architecture, options, message):
    with pytest.raises(ValueError, match=message):
        MoEHFLM(pretrained=str(tiny_model(architecture)), device="cpu", **options)


def test_beam_search_with_capture_is_refused(tiny_model, tmp_path):
    lm = MoEHFLM(pretrained=str(tiny_model("olmoe")), device="cpu", routing_out=str(tmp_path))
    request = Instance(
        "generate_until", {}, ("Q:", {"until": ["\n"], "max_gen_toks": 4, "num_beams": 4}), 0, metadata=("safety", 0, 1)
    )
    with pytest.raises(ValueError, match=r"safety: routing capture follows one generated sequence per request"):
        lm.generate_until([request])


def test_drop_is_refused_for_an_adapter_that_only_reads_its_gate():
    registration = register_router(
        RouterAdapter(
            router_class=ToyGate,
            read=lambda gate, inputs, output: (output["ids"], output["weights"]),
            num_experts=4,
            top_k=2,
        )
    )
    layers = find_moe_layers(ToyMoE())
    registration.remove()
    with pytest.raises(
        ValueError, match=r"disable_mode=drop needs the routing a gate hands to its experts; the adapter for ToyGate"
    ):
        plan_interventions(layers, disable_experts="*:0", disable_mode="drop")


def test_expert_lists_pass_through_lm_eval_model_args_when_quoted(tiny_model):
    from lm_eval._cli.utils import key_val_to_dict

    args = key_val_to_dict(f'pretrained={tiny_model("mixtral")},disable_experts="*:1,3",disable_mode=drop')
    lm = MoEHFLM(device="cpu", **args)
    assert {key: set(change.disabled) for key, change in lm.routing_plan.items()} == {
        "decoder.0": {1, 3},
        "decoder.1": {1, 3},
    }


# -- the routing directory and the capture's state ------------------------------------------------------------


def test_a_failed_second_run_leaves_the_first_runs_records(tiny_model, tmp_path):
    path, routing = str(tiny_model("qwen2_moe")), tmp_path / "routing"
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    lm_eval.simple_evaluate(
        model=MoEHFLM(pretrained=path, device="cpu", routing_out=str(routing)),
        tasks=["moe_rbench_sst2"],
        task_manager=manager,
        limit=4,
    )
    first = sorted((r.task, r.doc_id, r.request_index) for r in load_records(routing))
    assert len(first) == 8
    with pytest.raises(RoutingDirectoryError, match="holds the routing records of an earlier run"):
        MoEHFLM(pretrained=path, device="cpu", routing_out=str(routing))
    broken = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(MissingDataError):
        lm_eval.simple_evaluate(
            model=MoEHFLM(pretrained=path, device="cpu", routing_out=str(routing), routing_overwrite=True),
            tasks=["moe_rbench_sst2"],
            task_manager=broken,
            limit=4,
        )
    assert sorted((r.task, r.doc_id, r.request_index) for r in load_records(routing)) == first
    lm = MoEHFLM(pretrained=path, device="cpu", routing_out=str(routing), routing_overwrite=True)
    lm_eval.simple_evaluate(model=lm, tasks=["moe_rbench_style_augment"], task_manager=manager, limit=2)
    assert {r.task for r in load_records(routing)} == {"moe_rbench_style_augment"}


def test_a_row_that_matches_no_request_stops_the_call_at_once_naming_the_document(tiny_model, tmp_path):
    lm = MoEHFLM(pretrained=str(tiny_model("mixtral")), device="cpu", routing_out=str(tmp_path))
    lm._max_length = 6  # HFLM now cuts rows where the capture does not expect it
    with pytest.raises(
        InternalsChanged,
        match=r"a scoring row \(6 tokens: .*matches no request; it looks like task mc, "
        r"document 0, request [01]",
    ):
        lm.loglikelihood(scoring_requests())
    assert lm._capture.pending_requests() == 0  # nothing of the failed call stays behind
    lm._max_length = None
    lm.generate_until(generation_requests())  # the next call works
    lm.close()
    assert {r.request_type for r in load_records(tmp_path)} == {"generate_until"}


def test_pending_capture_state_does_not_grow_with_request_length(tiny_model, tmp_path):
    """What the capture keeps per waiting request, measured: a digest and a few numbers, not the tokens."""
    lm = MoEHFLM(pretrained=str(tiny_model("mixtral")), device="cpu", routing_out=str(tmp_path))
    per_request = {}
    for length in (50, 2000):
        instances = [Instance("loglikelihood", {}, ("x " * length, " y"), 0, metadata=("t", i, 1)) for i in range(500)]
        token_requests = [(None, list(range(length)), [7]) for _ in instances]  # lm-eval's own lists
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        lm._capture.expect_scoring(instances, token_requests)
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        per_request[length] = grown / len(instances)
        lm._capture._reset()
    assert per_request[2000] < 1.2 * per_request[50] + 64 and per_request[2000] < 1024, per_request


@pytest.mark.parametrize(
    "failing",
    [{"routing_out": "a file"}, {"dola_layers": "16,18,20"}],
    ids=["routing directory refused", "decoding refused"],
)
def test_a_model_object_is_left_as_it_came_when_set_up_fails_after_the_hooks(tiny_model, tmp_path, failing):
    """`pretrained` may be the caller's own model: a refusal after the routing hooks were installed removes them."""
    from transformers import AutoTokenizer

    path = str(tiny_model("olmoe"))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    (tmp_path / "a file").write_text("not a directory")
    if "routing_out" in failing:
        failing = {"routing_out": str(tmp_path / "a file")}
    with pytest.raises(ValueError):
        MoEHFLM(pretrained=model, tokenizer=tokenizer, device="cpu", top_k=1, disable_experts="*:0", **failing)
    ours = [  # transformers leaves output-capturing hooks of its own once a forward asked for router logits
        (name, hook)
        for name, module in model.named_modules()
        for hook in (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
        if getattr(hook, "__module__", "").startswith("moe_rbench")
    ]
    assert not ours
    assert {layer.router.top_k for layer in find_moe_layers(model)} == {2}
    assert not list(tmp_path.glob("*.lock"))


def test_close_removes_every_hook_and_restores_the_routers(tiny_model, tmp_path):
    path = str(tiny_model("olmoe"))
    plain = HFLM(pretrained=path, device="cpu").loglikelihood(scoring_requests())
    lm = MoEHFLM(pretrained=path, device="cpu", top_k=1, disable_experts="*:0", routing_out=str(tmp_path))
    assert lm.loglikelihood(scoring_requests()) != plain
    lm.close()
    assert {layer.router.top_k for layer in lm.moe_layers} == {2}
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in lm.model.modules())
    assert lm.loglikelihood(scoring_requests()) == plain
