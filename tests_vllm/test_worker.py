"""The vLLM worker extension against transformers: for mixtral, qwen3_moe and olmoe, five prompts under four
settings (plain, top_k=1, force, disable) in one `llm.generate` call with chunked prefill; captured routing,
prompt log-probabilities and greedy generations equal a transformers reference with the same intervention."""

from __future__ import annotations

import types

import numpy as np
import pytest

from moe_rbench_models.errors import OptionError
from moe_rbench_models.vllm.checks import VLLMSetupError, check_vllm_config
from moe_rbench_models.vllm.tiny import NUM_EXPERTS, NUM_LAYERS, TOP_K, build_vllm_tiny_model
from tests_vllm import reference
from tests_vllm.conftest import close_llm, make_llm

ARCHITECTURES = ("mixtral", "qwen3_moe", "olmoe")
PROMPT_LENGTHS = (5, 23, 11, 40, 17)
GENERATED = 4
SETTINGS = {
    "plain": {},
    "top1": {"top_k": 1},
    "force": {"force": {0: [5], 2: [1, 6]}},
    "disable": {"disable": {1: [0, 1, 2], 3: [4]}},
}
MAX_WEIGHT_ERROR, MAX_LOGPROB_ERROR = 1e-4, 1e-3


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-tiny")
    return {architecture: build_vllm_tiny_model(architecture, root / architecture) for architecture in ARCHITECTURES}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def served(request, model_dirs):
    """One LLM per architecture with the extension installed, and everything one generate call produced."""
    llm = make_llm(model_dirs[request.param])
    try:
        layers = llm.collective_rpc("moe_install")[0]
        yield request.param, llm, layers, _generate_all(llm)
    finally:
        close_llm(llm)


def _prompts() -> list[list[int]]:
    rng = np.random.default_rng(1)
    return [[int(token) for token in rng.integers(3, 512, size=length)] for length in PROMPT_LENGTHS]


def _generate_all(llm):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    requests, params, keys = [], [], []
    for name, settings in SETTINGS.items():
        for i, prompt in enumerate(_prompts()):
            extra = {"moe_rbench": {**settings, "tag": f"{name}/{i}", "capture": True}}
            params.append(
                SamplingParams(
                    max_tokens=GENERATED, temperature=0.0, prompt_logprobs=0, ignore_eos=True, extra_args=extra
                )
            )
            requests.append(TokensPrompt(prompt_token_ids=prompt))
            keys.append((name, i))
    outputs = llm.generate(requests, params, use_tqdm=False)
    captured = llm.collective_rpc("moe_fetch", args=([f"{name}/{i}" for name, i in keys],))[0]
    return {key: (output, captured[f"{key[0]}/{key[1]}"]) for key, output in zip(keys, outputs, strict=True)}


def test_install_describes_every_moe_layer(served):
    architecture, _, layers, _ = served
    assert [layer["layer"] for layer in layers] == list(range(NUM_LAYERS))
    assert {(layer["num_experts"], layer["top_k"]) for layer in layers} == {(NUM_EXPERTS, TOP_K)}
    assert {layer["renormalize"] for layer in layers} == {architecture != "olmoe"}


def test_routing_logprobs_and_generations_equal_transformers(served, model_dirs):
    architecture, _, _, results = served
    model = reference.load(model_dirs[architecture])
    weight_errors, logprob_errors = [], []
    for (name, i), (output, captured) in results.items():
        prompt, settings = _prompts()[i], SETTINGS[name]
        sequence = prompt + list(output.outputs[0].token_ids)
        log_probs, routed = reference.run(model, sequence[:-1], settings)  # the last token is never fed back
        assert captured["positions"] == list(range(len(sequence) - 1)), (name, i)
        for index, layer in enumerate(captured["layers"]):
            ids, weights = np.array(captured["ids"][index]), np.array(captured["weights"][index])
            assert ids.tolist() == routed[layer][0].tolist(), (name, i, layer)
            weight_errors.append(float(np.abs(weights - routed[layer][1].numpy()).max()))
        got = [entry[prompt[j]].logprob for j, entry in enumerate(output.prompt_logprobs) if j > 0]
        expected = [float(log_probs[j - 1, prompt[j]]) for j in range(1, len(prompt))]
        logprob_errors.append(float(np.abs(np.array(got) - np.array(expected)).max()))
        assert list(output.outputs[0].token_ids) == reference.greedy(model, prompt, GENERATED, settings), (name, i)
    worst = f"max weight error {max(weight_errors):.2e}, max log-prob error {max(logprob_errors):.2e}"
    print(f"METRICS {architecture}: {worst}")
    assert max(weight_errors) < MAX_WEIGHT_ERROR
    assert max(logprob_errors) < MAX_LOGPROB_ERROR


def test_each_intervention_does_what_it_says(served):
    architecture, _, _, results = served
    for name in ("top1", "force", "disable"):
        changed = [results[name, i][1]["ids"] != results["plain", i][1]["ids"] for i in range(len(PROMPT_LENGTHS))]
        assert any(changed), name
    for i in range(len(PROMPT_LENGTHS)):
        top1, forced, disabled = (results[name, i][1] for name in ("top1", "force", "disable"))
        assert {len(row) for layer in top1["ids"] for row in layer} == {1}
        weights = {row[0] for layer in top1["weights"] for row in layer}
        assert weights == {1.0} if architecture != "olmoe" else max(weights) < 1.0  # OLMoE does not renormalise
        for layer, experts in SETTINGS["force"]["force"].items():
            assert all(set(experts) <= set(row) for row in forced["ids"][layer])
        for layer, experts in SETTINGS["disable"]["disable"].items():
            assert not any(set(experts) & set(row) for row in disabled["ids"][layer])


def test_unknown_layer_is_refused(served):
    _, llm, _, _ = served
    with pytest.raises(Exception, match="layer 9 is not an MoE layer of this model; MoE layers .*: 0, 1, 2, 3"):
        llm.collective_rpc("moe_check", args=({"moe_rbench": {"force": {9: [1]}}},))
    with pytest.raises(Exception, match="layer 0 has experts 0-7; got \\[8\\]"):
        llm.collective_rpc("moe_check", args=({"moe_rbench": {"disable": {0: [8]}}},))


def test_prefix_caching_is_refused(model_dirs):
    llm = make_llm(model_dirs["mixtral"], enable_prefix_caching=True)
    try:
        with pytest.raises(Exception, match="prefix caching is on.*enable_prefix_caching=False"):
            llm.collective_rpc("moe_install")
    finally:
        close_llm(llm)


def _engine_config(eager=True, prefix_caching=False, eplb=False, pipeline=1, data=1, expert=False, speculative=None):
    """The parts of a VllmConfig that `check_vllm_config` reads."""
    from vllm.config.compilation import CompilationMode

    parallel = types.SimpleNamespace(
        enable_eplb=eplb,
        pipeline_parallel_size=pipeline,
        data_parallel_size=data,
        enable_expert_parallel=expert,
    )
    return types.SimpleNamespace(
        model_config=types.SimpleNamespace(enforce_eager=eager),
        compilation_config=types.SimpleNamespace(mode=CompilationMode.NONE if eager else CompilationMode.VLLM_COMPILE),
        cache_config=types.SimpleNamespace(enable_prefix_caching=prefix_caching),
        parallel_config=parallel,
        speculative_config=speculative,
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"eager": False}, "torch.compile is active.*enforce_eager=True"),
        ({"prefix_caching": True}, "prefix caching is on.*enable_prefix_caching=False"),
        ({"eplb": True}, "EPLB.*physical expert replicas.*enable_eplb=False"),
        ({"pipeline": 2}, "pipeline_parallel_size': 2.*tensor parallelism only"),
        ({"data": 2}, "data_parallel_size': 2.*tensor parallelism only"),
        ({"expert": True}, "enable_expert_parallel=True.*without expert parallelism"),
        ({"speculative": object()}, "speculative decoding is on.*without speculative_config"),
    ],
)
def test_unsupported_engine_settings_are_refused(setting, message):
    check_vllm_config(_engine_config())  # the settings moe_vllm uses pass
    with pytest.raises(VLLMSetupError, match=message):
        check_vllm_config(_engine_config(**setting))


def test_settings_are_checked_without_a_model():
    from moe_rbench_models.vllm.checks import LayerInfo
    from moe_rbench_models.vllm.settings import read_settings

    layers = {3: LayerInfo(3, "model.layers.3.mlp.experts", 8, 2, True, "CPURouter")}
    with pytest.raises(OptionError, match="between 1 and the model's 2"):
        read_settings({"moe_rbench": {"top_k": 3}}, layers)
    with pytest.raises(OptionError, match="at most 1 can be forced"):
        read_settings({"moe_rbench": {"top_k": {"3": 1}, "force": {3: [0, 1]}}}, layers)
    with pytest.raises(OptionError, match="without a 'tag'"):
        read_settings({"moe_rbench": {"capture": True}}, layers)
    with pytest.raises(OptionError, match="keys tag, capture"):
        read_settings({"moe_rbench": {"topk": 1}}, layers)
    assert read_settings({"moe_rbench": {"disable": {"3": [7, 6]}}}, layers).edits[3].removed == (6, 7)


def test_fetch_keeps_the_last_computation_of_each_position():
    """A preempted request is recomputed from position 0: its later chunks replace the earlier ones."""
    from moe_rbench_models.vllm.checks import LayerInfo
    from moe_rbench_models.vllm.worker import CapturedChunk, MoERoutingExtension

    worker = MoERoutingExtension()
    worker._moe_layers = {2: LayerInfo(2, "model.layers.2.mlp.experts", 8, 2, True, "CPURouter")}
    worker._moe_store, worker._moe_tag_owner = {}, {"t": "request-0"}

    def chunk(start, stop, expert):
        rows = stop - start
        ids, weights = np.full((rows, 2), expert), np.full((rows, 2), 0.5, dtype=np.float32)
        return CapturedChunk(np.arange(start, stop), {2: ids}, {2: weights})

    worker._moe_store["t"] = [chunk(0, 3, 1), chunk(3, 5, 1), chunk(0, 4, 7), chunk(4, 6, 7)]
    fetched = worker.moe_fetch(["t"])["t"]
    assert fetched["positions"] == [0, 1, 2, 3, 4, 5] and fetched["layers"] == [2]
    assert [row[0] for row in fetched["ids"][0]] == [7] * 6
    with pytest.raises(OptionError, match="nothing was captured under \\['t'\\]"):
        worker.moe_fetch(["t"])
