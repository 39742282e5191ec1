"""`moe_hf`'s model arguments: yes/no switches read strictly (lm-eval passes any word but true/false on as a string,
which Python reads as true), and every refusal of moe_hf is one line with exit 2 under `moe-rbench run`."""

from __future__ import annotations

import pytest
import torch
from helpers import BIN, FIXTURE_DATA, run
from lm_eval.api.instance import Instance
from test_bad_input import one_line_error

from moe_rbench_models import MoEHFLM
from moe_rbench_models.errors import OptionError
from moe_rbench_models.routing import load_manifest
from moe_rbench_models.routing.records import RoutingDirectoryError
from moe_rbench_models.specs import parse_bool

CONTEXT = "Given the sentences: a gentle , funny film\n what is the sentiment of this sentence ? "
SWITCHES = ("routing_logits", "routing_overwrite", "drop_renormalize", "dola_post_softmax", "dola_final_norm")


def scoring_requests() -> list[Instance]:
    return [
        Instance("loglikelihood", {}, (CONTEXT, word), index, metadata=("mc", 0, 1))
        for index, word in enumerate(["negative", "positive"])
    ]


def scores(path, **model_args) -> tuple[list, dict]:
    lm = MoEHFLM(pretrained=str(path), device="cpu", **model_args)
    answers = lm.loglikelihood(scoring_requests())
    info = lm.get_model_info()["moe"]
    lm.close()
    return answers, info


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, True), (0, False), ("TRUE", True), ("false", False), (" Yes ", True)]
    + [("no", False), ("1", True), ("0", False)],
)
def test_a_switch_takes_the_usual_spellings(value, expected):
    assert parse_bool(value, "routing_logits") is expected


@pytest.mark.parametrize("option", [*SWITCHES, "trust_remote_code", "parallelize"])
@pytest.mark.parametrize("value", ["maybe", "nope", 2, 0.5, ""])
def test_any_other_value_of_a_switch_is_refused_naming_it(option, value):
    with pytest.raises(OptionError, match=rf"^{option}: expected true or false \(also 1/0 or yes/no"):
        MoEHFLM(pretrained="never-loaded", device="cpu", **{option: value})


def test_routing_overwrite_no_keeps_the_earlier_records(tiny_model, tmp_path):
    path, out = tiny_model("mixtral"), tmp_path / "routing"
    scores(path, routing_out=str(out))
    earlier = load_manifest(out)["run"]
    with pytest.raises(RoutingDirectoryError, match="holds the routing records of an earlier run"):
        MoEHFLM(pretrained=str(path), device="cpu", routing_out=str(out), routing_overwrite="no")
    assert load_manifest(out)["run"] == earlier


def test_routing_logits_yes_keeps_logits_and_records_a_boolean(tiny_model, tmp_path):
    scores(tiny_model("mixtral"), routing_out=str(tmp_path / "routing"), routing_logits="yes")
    assert load_manifest(tmp_path / "routing")["logits"] is True


def test_drop_renormalize_no_is_false(tiny_model):
    path = tiny_model("mixtral")
    drop = {"disable_experts": "*:1", "disable_mode": "drop"}
    (no, info), (false, _), (true, _) = (scores(path, **drop, drop_renormalize=v) for v in ("no", False, True))
    assert false != true  # the switch changes the scores on this model
    assert no == false
    assert info["interventions"]["drop_renormalize"] is False


def test_dola_post_softmax_no_is_false_and_recorded(tiny_model):
    path = tiny_model("mixtral")
    (no, info), (false, _), (true, _) = (
        scores(path, dola_layers="high", dola_post_softmax=v) for v in ("No", False, True)
    )
    assert false != true
    assert no == false
    assert info["decoding"]["post_softmax"] is False
    assert info["decoding"]["final_norm"] is False


def test_generation_without_an_attention_mask_under_routing_capture_says_what_is_missing(tiny_model, tmp_path):
    lm = MoEHFLM(pretrained=str(tiny_model("mixtral")), device="cpu", routing_out=str(tmp_path / "routing"))
    context = torch.tensor([lm.tok_encode("Q: What is the capital of France?\nA:")])
    with pytest.raises(OptionError, match=r"without attention_mask: routing capture \(routing_out\) needs") as error:
        lm._model_generate(context, max_length=context.shape[1] + 4, stop=["\n\n"], do_sample=False)
    assert "install the versions" not in str(error.value)


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ('force_experts="9:1"', "Layer '9' is not an MoE layer of this model"),  # a refusal of the plan (X01)
        ("routing_overwrite=nope", "routing_overwrite: expected true or false"),  # a switch (D13)
    ],
)
def test_a_refusal_of_moe_hf_under_moe_rbench_run_is_one_line(tiny_model, model_args, message):
    command = [str(BIN / "moe-rbench"), "run", "--model", "moe_hf", "--tasks", "moe_rbench_sst2", "--limit", "2"]
    model_args = f"pretrained={tiny_model('mixtral')},{model_args}"
    result = run(
        [*command, "--model_args", model_args, "--device", "cpu", "--metadata", f'{{"data_dir": "{FIXTURE_DATA}"}}'],
        check=False,
    )
    one_line_error(result, "moe-rbench run: ", message)
