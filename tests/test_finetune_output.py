"""`moe-rbench finetune` never loses data: OUT must be new or empty (or --overwrite), is never the input checkpoint,
and is written atomically; bad options are refused in one line before anything is loaded."""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
from pathlib import Path

import pytest
from helpers import BIN, FIXTURE_DATA, run

from moe_rbench.finetune import Recipe
from moe_rbench.finetune import finetune as api_finetune
from moe_rbench_models.errors import OptionError

FAST = ["--protocol", "classify", "--dataset", "sst2", "--limit", "8", "--max_steps", "1", "--max_length", "64"]


def finetune(model, out, *options: str, cwd=None, preexec_fn=None):
    command = [str(BIN / "moe-rbench"), "finetune", str(model), str(out), *FAST, "--data_dir", str(FIXTURE_DATA)]
    if preexec_fn is None:
        return run([*command, *options], check=False, cwd=cwd)
    import subprocess

    return subprocess.run(
        [*command, *options], capture_output=True, text=True, timeout=300, cwd=cwd, preexec_fn=preexec_fn
    )


def assert_refused(result, *fragments: str, loaded: bool = False) -> None:
    """Exit 2 and one line, `moe-rbench finetune: ...`, holding each fragment: the only line on stderr, or (`loaded`:
    after the libraries' progress bars) its last line, without a traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and (loaded or len(lines) == 1) and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("moe-rbench finetune: ") and all(f in lines[-1] for f in fragments), lines[-1]


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.fixture
def checkpoint(tiny_model, tmp_path) -> Path:
    """A copy of the tiny Mixtral (a checkpoint the test may try to overwrite)."""
    return Path(shutil.copytree(tiny_model("mixtral"), tmp_path / "ckpt"))


def test_a_folder_that_holds_files_is_replaced_only_with_overwrite(tiny_model, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}')
    (out / "notes.txt").write_text("notes")
    assert_refused(
        finetune(tiny_model("mixtral"), out), "is not empty (it holds config.json, notes.txt)", "--overwrite"
    )
    assert (out / "config.json").read_text() == '{"mine": 1}' and (out / "notes.txt").read_text() == "notes"
    result = finetune(tiny_model("mixtral"), out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert "moe_rbench_recipe" in json.loads((out / "config.json").read_text())
    assert not (out / "notes.txt").exists()  # replaced as a whole, as --overwrite says
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine"]  # no staging or replaced folder left


def test_the_input_checkpoint_is_never_the_output_even_with_overwrite(checkpoint, tmp_path):
    before = digests(checkpoint)
    (tmp_path / "link").symlink_to(checkpoint)
    for model, out, cwd, options in [
        (checkpoint, checkpoint, None, []),
        (checkpoint, checkpoint, None, ["--overwrite"]),
        (checkpoint, tmp_path / "link", None, ["--overwrite"]),  # a symbolic link to it
        ("ckpt", "../" + tmp_path.name + "/ckpt", tmp_path, ["--overwrite"]),  # relative paths
        (checkpoint, tmp_path, None, ["--overwrite"]),  # the folder that holds it
    ]:
        result = finetune(model, out, *options, cwd=cwd)
        assert_refused(result, "the input checkpoint", "--overwrite never replaces the input")
    assert digests(checkpoint) == before


@pytest.mark.parametrize("earlier", [False, True], ids=["new-folder", "overwrite"])
def test_a_full_disk_leaves_no_checkpoint_and_keeps_what_was_there(tiny_model, checkpoint, tmp_path, earlier):
    out = checkpoint if earlier else tmp_path / "new"
    before = digests(checkpoint)
    limit = 200 * 1024  # below the tiny model's weights file

    def full_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail, EFBIG

    result = finetune(tiny_model("mixtral"), out, *(["--overwrite"] if earlier else []), preexec_fn=full_disk)
    assert_refused(
        result, f"Could not write the fine-tuned checkpoint for {out}", "File too large", "run again", loaded=True
    )
    assert digests(checkpoint) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt"]  # no OUT, no staging folder


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--training_args", "adam_beta1=abc"], ["adam_beta1='abc'", "takes a number, got text"]),
        (["--limit", "0"], ["--limit", "N at least 1", "got 0"]),
        (["--epochs", "0"], ["--epochs must be positive, got 0.0", "0 optimizer steps"]),
    ],
)
def test_bad_values_are_refused_before_anything_is_loaded(tiny_model, tmp_path, options, fragments):
    assert_refused(finetune(tiny_model("mixtral"), tmp_path / "out", *options), *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"limit": -5}, "--limit takes the first N training examples (N at least 1), got -5"),
        ({"max_steps": 0}, "--max_steps 0 would train 0 optimizer steps"),
        ({"bf16": "maybe"}, "--training_args bf16='maybe': TrainingArguments.bf16 takes true or false, got text"),
        ({"run_name": 2024}, "takes text or none, got a whole number (text that reads as a number"),
        ({"lr_scheduler_type": "sideways"}, "--training_args: sideways is not a valid SchedulerType"),
    ],
)
def test_the_python_api_checks_the_same_values_first(tmp_path, arguments, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        api_finetune(tmp_path / "no model needed", tmp_path / "out", Recipe("classify", "sst2"), **arguments)
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_a_file_or_under_one_is_refused(tiny_model, tmp_path):
    (tmp_path / "file").write_text("mine")
    assert_refused(finetune(tiny_model("mixtral"), tmp_path / "file"), "is a file; give a directory")
    assert_refused(finetune(tiny_model("mixtral"), tmp_path / "file" / "out"), "a part of its parent path is a file")
    assert (tmp_path / "file").read_text() == "mine"


def test_a_missing_model_folder_is_named(tmp_path):
    assert_refused(
        finetune(tmp_path / "no_such_model", tmp_path / "out"), "no_such_model: no such checkpoint directory"
    )
    (tmp_path / "empty").mkdir()
    assert_refused(finetune(tmp_path / "empty", tmp_path / "out"), "empty: no checkpoint could be loaded from it")
    assert sorted(os.listdir(tmp_path)) == ["empty"]


def test_an_architecture_without_a_classification_class_is_pointed_to_the_label_words(tiny_model, tmp_path):
    assert_refused(
        finetune(tiny_model("olmoe"), tmp_path / "out"),
        "(olmoe) has no sequence-classification class",
        "--head causal_lm",
    )
    result = finetune(
        tiny_model("olmoe"), tmp_path / "out", "--head", "causal_lm", "--max_length", "256"
    )  # docs/finetune.md's OLMoE example
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["OlmoeForCausalLM"]
