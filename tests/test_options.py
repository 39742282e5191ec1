"""`MoEOptions`: every model argument of `moe_hf` read and checked once, before a model is loaded (no model here)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from moe_rbench_models.decoding import DolaOptions, SelfContrastOptions
from moe_rbench_models.errors import OptionError
from moe_rbench_models.options import HFLM_SWITCHES, MODEL_ARGUMENTS, MoEOptions
from moe_rbench_models.specs import LayerSpec

# one value of each moe_hf argument that is refused before the model loads
BAD_VALUES = {
    "data_dir": 3,
    "routing_out": "",
    "routing_logits": "maybe",
    "routing_overwrite": "nope",
    "top_k": "*:1,2",
    "disable_experts": "*3",
    "disable_mode": "mask",
    "drop_renormalize": 2,
    "force_experts": "*:x",
    "dola_layers": "middle",
    "dola_relative_top": "high",
    "dola_post_softmax": "",
    "dola_final_norm": 0.5,
    "dola_divergence": "kl",
    "dola_select": "all",
    "scmoe_beta": "strong",
    "scmoe_weak_k": 1.5,
    "scmoe_alpha": "x",
    "head": "lm",
    "label_map": "",
}


def test_every_model_argument_is_a_field_of_the_options():
    names = {option.name for option in fields(MoEOptions)}
    assert set(MODEL_ARGUMENTS) == names - {"hf_arguments", "decoding"}
    assert set(BAD_VALUES) == set(MODEL_ARGUMENTS)  # a new argument needs a refused value here


@pytest.mark.parametrize(("option", "value"), BAD_VALUES.items())
def test_a_bad_value_is_refused_naming_its_option(option, value):
    with pytest.raises(OptionError, match=rf"^{option}\b"):
        MoEOptions.parse({option: value})


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ({"label_map": "0,1"}, "label_map applies to head=sequence_classification only"),
        ({"head": "sequence_classification", "dola_layers": "paper"}, "work with the causal LM head only"),
        ({"routing_logits": "yes"}, "routing_logits=true needs routing_out"),
        ({"disable_experts": "*:0", "drop_renormalize": True}, "drop_renormalize applies to disable_mode=drop"),
        ({"dola_layers": "paper", "scmoe_beta": 0.5}, "choose one"),
        ({"dola_select": "batch"}, "dola_select needs dola_layers"),
        ({"scmoe_alpha": 0.2}, "scmoe_alpha needs scmoe_beta"),
        ({"dola_layers": "paper", "dola_relative_top": 2}, "dola_relative_top must be between 0 and 1"),
        ({"scmoe_beta": 0}, "scmoe_beta must be positive"),
    ],
)
def test_combinations_and_ranges_are_checked_before_the_model_loads(model_args, message):
    with pytest.raises(OptionError, match=message):
        MoEOptions.parse(model_args)


def test_values_are_read_and_the_rest_goes_to_hflm():
    options = MoEOptions.parse(
        {
            "top_k": "12:2;13:1",
            "disable_experts": 3,
            "routing_out": "out",
            "routing_logits": "Yes",
            "dola_layers": "16, 18",
            "trust_remote_code": "no",
            "batch_size": "auto",
            "device": None,
        }
    )
    assert options.top_k == LayerSpec("12:2;13:1", (("12", (2,)), ("13", (1,))))
    assert options.disable_experts == LayerSpec(3, (("*", (3,)),))
    assert options.routing_logits is True and options.dola_layers == (16, 18)
    assert options.decoding == DolaOptions(layers=(16, 18))
    assert options.hf_arguments == {"trust_remote_code": False, "batch_size": "auto", "device": None}
    assert options.moe_options == {
        "routing_out": "out",
        "top_k": "12:2;13:1",
        "disable_experts": 3,
        "dola_layers": "16,18",
    }
    assert MoEOptions.parse({"scmoe_beta": "0.5", "scmoe_weak_k": "2"}).decoding == SelfContrastOptions(0.5, 2)
    assert {"trust_remote_code", "parallelize"} <= HFLM_SWITCHES


def test_no_argument_is_plain_hf():
    options = MoEOptions.parse({})
    assert options == MoEOptions() and options.moe_options == {} and options.decoding is None
