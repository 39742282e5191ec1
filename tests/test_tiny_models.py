"""Tiny checkpoints of real architectures load by path like real ones, and their MoE layers are found."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import BIN, DENSE, MOE, run
from test_bad_input import one_line_error
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from moe_rbench_models.routing import find_moe_layers
from moe_rbench_models.tiny import ARCHITECTURES, SEQ2SEQ

LAYOUT = (2, 4, 2)  # tiny.py: every MoE has 2 MoE layers of 4 experts, top-2, but
OTHER_LAYOUTS = {"deepseek_v3": (2, 8, 2), "llama4_text": (2, 4, 1), "switch_transformers": (2, 4, 1)}


def expected_layout(architecture: str) -> tuple[int, int | None, int | None]:
    """(MoE layers, experts, top-k) of the tiny checkpoint."""
    return (0, None, None) if architecture in DENSE else OTHER_LAYOUTS.get(architecture, LAYOUT)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_tiny_checkpoint_loads_by_path_and_runs(tiny_model, architecture):
    path = tiny_model(architecture)
    tokenizer = AutoTokenizer.from_pretrained(path)
    auto_class = AutoModelForSeq2SeqLM if architecture in SEQ2SEQ else AutoModelForCausalLM
    model = auto_class.from_pretrained(path)
    assert model.config.model_type == architecture
    inputs = tokenizer(["what is the sentiment of this sentence ?"], return_tensors="pt")
    extra = {"decoder_input_ids": inputs.input_ids[:, :3]} if architecture in SEQ2SEQ else {}
    with torch.no_grad():
        logits = model(**inputs, **extra).logits
    assert logits.shape[-1] == len(tokenizer) == 512 and torch.isfinite(logits).all()

    layers = find_moe_layers(model)
    count, experts, top_k = expected_layout(architecture)
    assert len(layers) == count
    assert all(layer.num_experts == experts and layer.top_k == top_k for layer in layers)


def test_the_tests_take_their_architectures_from_tiny():
    """helpers.DENSE names dense architectures tiny.py builds; every other one is an MoE the tests cover."""
    assert set(DENSE) <= set(ARCHITECTURES) and sorted([*MOE, *DENSE]) == sorted(ARCHITECTURES)


def test_switch_layers_are_found_on_both_sides(tiny_model):
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model("switch_transformers"))
    assert [(layer.side, layer.layer) for layer in find_moe_layers(model)] == [("encoder", 1), ("decoder", 1)]


def test_tiny_checkpoints_are_reproducible(tiny_model, tmp_path):
    from moe_rbench_models.tiny import build_tiny_model

    again = AutoModelForCausalLM.from_pretrained(build_tiny_model("olmoe", tmp_path / "again"))
    first = AutoModelForCausalLM.from_pretrained(tiny_model("olmoe"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))


def tiny_model_command(*arguments):
    return run([str(BIN / "moe-rbench"), "tiny-model", *arguments], check=False)


def test_tiny_model_into_a_file_is_refused_and_the_file_kept(tmp_path):
    """Pointed at a file, transformers' save_pretrained only warns: the command said it wrote a checkpoint."""
    (tmp_path / "notes").write_text("hi\n")
    one_line_error(tiny_model_command("mixtral", str(tmp_path / "notes")), f"OUT_DIR {tmp_path / 'notes'} is a file")
    one_line_error(
        tiny_model_command("mixtral", str(tmp_path / "notes" / "model")), f"is inside {tmp_path / 'notes'}, a file"
    )
    assert (tmp_path / "notes").read_text() == "hi\n"


def test_tiny_model_set_values_of_the_wrong_type_name_the_field(tmp_path):
    one_line_error(
        tiny_model_command("mixtral", str(tmp_path / "m"), "--set", "num_local_experts=abc"),
        "--set num_local_experts=abc: num_local_experts (int, 4 in the tiny mixtral) takes a whole number, e.g. "
        "--set num_local_experts=4",
    )
    one_line_error(
        tiny_model_command("mixtral", str(tmp_path / "m"), "--set", "tie_word_embeddings=yes"),
        "tie_word_embeddings (bool, False in the tiny mixtral) takes True or False",
    )
    assert not (tmp_path / "m").exists()
    # a whole number where the config holds a float is that number
    run([str(BIN / "moe-rbench"), "tiny-model", "llama", str(tmp_path / "m"), "--set", "initializer_range=1"])
    assert json.loads((tmp_path / "m" / "config.json").read_text())["initializer_range"] == 1.0
