"""The data layer: local release files, their errors, the hub layout, and `moe-rbench data`."""

from __future__ import annotations

import json
import shutil

import datasets
import lm_eval
import pytest
from helpers import BIN, FIXTURE_DATA, run

import moe_rbench_tasks
from moe_rbench_models import MoEHFLM
from moe_rbench_tasks.data import MalformedDataError, MissingDataError
from moe_rbench_tasks.families import STYLE_OOD
from moe_rbench_tasks.style_ood import _hub_rows, load_docs, to_docs


def copy_fixture_data(tmp_path):
    return shutil.copytree(FIXTURE_DATA, tmp_path / "data")


def test_docs_keep_decodingtrust_ids_aligned_across_styles():
    base = load_docs(subset="base", data_dir=str(FIXTURE_DATA))
    styled = load_docs(subset="tweet_p0", data_dir=str(FIXTURE_DATA))
    assert base["test"]["id"] == styled["test"]["id"] == list(range(24))
    assert base["test"]["label"] == styled["test"]["label"]
    assert base["test"][0]["sentence"] != styled["test"][0]["sentence"]
    assert set(base["test"]["style"]) == {"base"} and set(styled["test"]["style"]) == {"tweet_p0"}


def test_few_shot_split_is_decodingtrusts_demonstrations():
    for style, demo_set in [("base", "base"), ("augment", "base"), ("tweet_p0", "tweet_p0.6")]:
        train = load_docs(subset=style, data_dir=str(FIXTURE_DATA))["train"]
        release = json.loads((FIXTURE_DATA / "decodingtrust" / "style.json").read_text())
        expected = [
            row["sentence"]
            for key in sorted(release["train_demo"])
            if key.rsplit("_", 1)[0] == demo_set
            for row in release["train_demo"][key]
        ]
        assert train["sentence"] == expected and len(expected) == 24


def test_environment_variable_selects_the_data_directory(monkeypatch):
    monkeypatch.setenv("MOE_RBENCH_DATA_DIR", str(FIXTURE_DATA))
    assert len(load_docs(subset="shake_w")["test"]) == 24


def test_missing_data_directory_names_it_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_RBENCH_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(
        MissingDataError, match=r"nowhere \(from MOE_RBENCH_DATA_DIR=.*\) does not exist.*moe-rbench data"
    ):
        load_docs(subset="base")


def test_missing_file_names_the_expected_path_and_where_to_get_it(tmp_path):
    with pytest.raises(MissingDataError) as error:
        load_docs(subset="base", data_dir=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "decodingtrust" / "style.json") in message
    assert "https://github.com/AI-secure/DecodingTrust/blob/main/data/ood/style.json" in message


def test_invalid_json_gives_file_line_and_column(tmp_path):
    data = copy_fixture_data(tmp_path)
    (data / "decodingtrust" / "style.json").write_text('{"dev": {\n  "base": [}\n}')
    with pytest.raises(MalformedDataError, match=r"style\.json, line 2, column 12: invalid JSON"):
        load_docs(subset="base", data_dir=str(data))


def test_malformed_row_gives_file_row_and_problem(tmp_path):
    data = copy_fixture_data(tmp_path)
    path = data / "decodingtrust" / "style.json"
    release = json.loads(path.read_text())
    release["dev"]["bible_p0"][3]["label"] = "7"
    path.write_text(json.dumps(release))
    with pytest.raises(
        MalformedDataError,
        match=r"style\.json: dev\.bible_p0\[3\]: label must be one of 0 or negative, 1 or positive; got '7'",
    ):
        load_docs(subset="bible_p0", data_dir=str(data))


def test_errors_reach_the_user_through_lm_eval(tiny_model, tmp_path):
    lm = MoEHFLM(pretrained=str(tiny_model("llama")), device="cpu")
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(tmp_path)})
    with pytest.raises(MissingDataError, match="decodingtrust/style.json, which does not exist"):
        lm_eval.simple_evaluate(model=lm, tasks=["moe_rbench_sst2"], task_manager=manager, limit=2)


def test_unknown_style_is_rejected():
    with pytest.raises(ValueError, match="Unknown Style-OOD set 'shake_p1'"):
        load_docs(subset="shake_p1", data_dir=str(FIXTURE_DATA))


def test_hub_layout_converts_to_the_same_documents():
    """The hub copy flattens style.json into rows; converting them gives the release file's documents."""
    release = json.loads((FIXTURE_DATA / "decodingtrust" / "style.json").read_text())
    flattened = [
        {
            "split": "dev",
            "category": style,
            "question_sentence": row["sentence"],
            "answer": row["label"],
            "id": row["id"],
        }
        for style, rows in release["dev"].items()
        for row in rows
    ]
    flattened += [
        {
            "split": "train_demo",
            "category": key,
            "question_sentence": row["sentence"],
            "answer": "positive" if row["label"] == "1" else "negative",
            "id": row["id"],
        }
        for key, rows in release["train_demo"].items()
        for row in rows
    ]
    hub_rows = datasets.Dataset.from_list(flattened)
    assert (
        to_docs(_hub_rows(hub_rows, "dev", "romantic_p0.6"), "romantic_p0.6", where="hub")
        == load_docs(subset="romantic_p0.6", data_dir=str(FIXTURE_DATA))["test"].to_list()
    )
    demos = to_docs(_hub_rows(hub_rows, "train_demo", "romantic_p0.6"), "romantic_p0.6", where="hub")
    assert demos == load_docs(subset="romantic_p0.6", data_dir=str(FIXTURE_DATA))["train"].to_list()


def test_style_ood_on_the_real_release_file(real_data_dir):
    base = load_docs(subset="base", data_dir=str(real_data_dir))["test"]
    assert len(base) == 872 and base["id"] == list(range(872))
    for style in STYLE_OOD.subsets[1:]:
        docs = load_docs(subset=style, data_dir=str(real_data_dir))
        assert docs["test"]["id"] == base["id"] and docs["test"]["label"] == base["label"], style
        assert len(docs["train"]) == 24 and not set(docs["train"]["sentence"]) & set(docs["test"]["sentence"])


def test_real_data_end_to_end_with_a_tiny_model(tiny_model, real_data_dir):
    lm = MoEHFLM(pretrained=str(tiny_model("qwen3_moe")), device="cpu", batch_size=8)
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(real_data_dir)})
    results = lm_eval.simple_evaluate(model=lm, tasks=["moe_rbench_ood"], task_manager=manager, limit=10)
    assert results["n-samples"]["moe_rbench_style_shake_p06"] == {"original": 872, "effective": 10}
    assert 0.0 <= results["groups"]["moe_rbench_ood_styles"]["acc,none"] <= 1.0


def test_moe_rbench_data_lists_sources_and_how_to_get_them(tmp_path):
    found = run([str(BIN / "moe-rbench"), "data", "--data_dir", str(FIXTURE_DATA)])
    assert f"found: {FIXTURE_DATA / 'decodingtrust' / 'style.json'}" in found.stdout
    missing = run([str(BIN / "moe-rbench"), "data"], env={"MOE_RBENCH_DATA_DIR": str(tmp_path)}, check=False)
    assert missing.returncode == 1
    assert f"MISSING: {tmp_path / 'decodingtrust' / 'style.json'}" in missing.stdout
    assert "obtain:  https://github.com/AI-secure/DecodingTrust" in missing.stdout
    assert "AI-Secure/DecodingTrust, config ood, split style" in missing.stdout
