"""`moe_hf` through lm-eval's Python API: it is `hf` when no MoE option is set, and reports the MoE layout."""

from __future__ import annotations

import lm_eval
import pytest
from helpers import FIXTURE_DATA, STYLE_OOD_TASKS
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM

import moe_rbench_tasks
from moe_rbench_models import MoEHFLM
from moe_rbench_tasks.style_ood import load_docs

CONTEXT = "Given the sentences: a gentle , funny film\n what is the sentiment of this sentence ? "
REQUESTS = {
    "loglikelihood": [
        Instance("loglikelihood", {}, (CONTEXT, word), index) for index, word in enumerate(["negative", "positive"])
    ]
    + [Instance("loglikelihood", {}, ("Q: What is the capital of France?\nA:", " Paris"), 2)],
    "loglikelihood_rolling": [
        Instance("loglikelihood_rolling", {}, ("The quick brown fox jumps over the lazy dog.",), 0),
        Instance("loglikelihood_rolling", {}, ("Thou art a most excellent film.",), 1),
    ],
    "generate_until": [
        Instance("generate_until", {}, (prompt, {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}), index)
        for index, prompt in enumerate(["Q: What is the capital of France?\nA:", "### Instruction: Explain."])
    ],
}


def answers(lm) -> dict[str, list]:
    return {kind: getattr(lm, kind)(requests) for kind, requests in REQUESTS.items()}


@pytest.mark.equivalence
@pytest.mark.parametrize("architecture", ["mixtral", "llama", "switch_transformers"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_moe_hf_equals_hf_without_moe_options(tiny_model, architecture, batch_size):
    path = str(tiny_model(architecture))
    expected = answers(HFLM(pretrained=path, device="cpu", batch_size=batch_size))
    got = answers(MoEHFLM(pretrained=path, device="cpu", batch_size=batch_size))
    assert got == expected
    assert any(text.strip() for text in got["generate_until"])  # the generations compared are not empty


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        ("qwen2_moe", {"architecture": "Qwen2MoeForCausalLM", "moe_layers": 2, "experts_per_layer": 4, "top_k": 2}),
        ("deepseek_v3", {"architecture": "DeepseekV3ForCausalLM", "moe_layers": 2, "experts_per_layer": 8, "top_k": 2}),
        (
            "switch_transformers",
            {
                "architecture": "SwitchTransformersForConditionalGeneration",
                "moe_layers": 2,
                "experts_per_layer": 4,
                "top_k": 1,
            },
        ),
        (
            "t5",
            {"architecture": "T5ForConditionalGeneration", "moe_layers": 0, "experts_per_layer": None, "top_k": None},
        ),
    ],
)
def test_model_info_reports_the_moe_layout(tiny_model, architecture, expected):
    info = MoEHFLM(pretrained=str(tiny_model(architecture)), device="cpu").get_model_info()
    assert {key: info["moe"][key] for key in expected} == expected
    assert info["model_num_parameters"] > 0  # hf's own entries are kept


def test_registered_as_moe_hf_and_hf_still_resolves():
    assert get_model("moe_hf") is MoEHFLM
    assert get_model("hf") is HFLM


def test_data_dir_argument_is_not_passed_to_from_pretrained(tiny_model):
    lm = MoEHFLM(pretrained=str(tiny_model("mixtral")), device="cpu", data_dir=str(FIXTURE_DATA))
    assert lm.data_dir == str(FIXTURE_DATA) and not hasattr(lm.model.config, "data_dir")


def test_python_api_simple_evaluate_with_our_task_manager(tiny_model):
    lm = MoEHFLM(pretrained=str(tiny_model("olmoe")), device="cpu", batch_size=4)
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    results = lm_eval.simple_evaluate(model=lm, tasks=["moe_rbench_ood"], task_manager=manager, limit=3)
    assert set(results["results"]) == {"moe_rbench_ood", "moe_rbench_ood_styles", *STYLE_OOD_TASKS}
    assert "acc,none" in results["groups"]["moe_rbench_ood_styles"]
    assert results["config"]["moe"]["model_type"] == "olmoe"


def test_few_shot_demonstrations_come_from_decodingtrust_train_demo(tiny_model):
    lm = MoEHFLM(pretrained=str(tiny_model("llama")), device="cpu", batch_size=4)
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    results = lm_eval.simple_evaluate(
        model=lm, tasks=["moe_rbench_style_tweet_p0"], task_manager=manager, limit=2, num_fewshot=3, log_samples=True
    )
    demos = load_docs(subset="tweet_p0", data_dir=str(FIXTURE_DATA))["train"]["sentence"]
    for sample in results["samples"]["moe_rbench_style_tweet_p0"]:
        context = sample["arguments"][0][0]  # (context, continuation) of the first choice
        assert context.count("Given the sentences: ") == 4  # three demonstrations, then the document
        assert sum(demo in context for demo in demos) == 3
        assert context.endswith(
            f"Given the sentences: {sample['doc']['sentence']}\n what is the sentiment of this sentence ? "
        )


@pytest.mark.parametrize(
    "options",
    [{"top_k": 1}, {"disable_experts": "*:0"}, {"routing_out": "ROUTING"}, {"dola_layers": "1"}, {"scmoe_beta": 0.5}],
)
def test_use_cache_with_an_moe_option_is_refused(tiny_model, tmp_path, options):
    """lm-eval keys its cache by request only: a cached plain run's answers would come back as this configuration's."""
    path = str(tiny_model("mixtral"))
    options = {key: str(tmp_path / "r") if value == "ROUTING" else value for key, value in options.items()}
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    cache = str(tmp_path / "cache" / "lm")
    plain = lm_eval.simple_evaluate(
        model=MoEHFLM(pretrained=path, device="cpu"),
        tasks=["moe_rbench_sst2"],
        task_manager=manager,
        limit=4,
        use_cache=cache,
    )
    assert plain["results"]["moe_rbench_sst2"]["acc,none"] is not None  # plain moe_hf (= hf) may use the cache
    with pytest.raises(
        ValueError, match=r"--use_cache cannot be combined with moe_hf's MoE options \(" + next(iter(options))
    ):
        lm_eval.simple_evaluate(
            model=MoEHFLM(pretrained=path, device="cpu", **options),
            tasks=["moe_rbench_sst2"],
            task_manager=manager,
            limit=4,
            use_cache=cache,
        )
