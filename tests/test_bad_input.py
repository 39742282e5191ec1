"""Bad input gets one clear message naming the file (and line) and the fix, through the real loaders and commands."""

from __future__ import annotations

import json
import shutil
import socket

import lm_eval
import pytest
from helpers import BIN, FIXTURE_DATA, evaluate_to, lm_eval_cli, run

import moe_rbench_tasks
from moe_rbench_models import MoEHFLM
from moe_rbench_tasks import hallucination, safety
from moe_rbench_tasks.data import DataError, MissingDataError
from moe_rbench_tasks.fewshot import FewShotError


@pytest.fixture
def data(tmp_path):
    return shutil.copytree(FIXTURE_DATA, tmp_path / "data")


def one_line_error(result, *fragments):
    """A command that failed with exit 2, no traceback, and its error as one line (the last on stderr, after any
    progress bar) holding every fragment."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("moe-rbench "), result.stderr
    for fragment in fragments:
        assert fragment in last, last


# -- release files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "content", "load", "message"),
    [
        (
            "nq_open/NQ-open.dev.jsonl",
            b"\n\n",
            hallucination.load_nq_open,
            r"NQ-open\.dev\.jsonl: no documents \(the file is empty\)",
        ),
        (
            "nq_open/NQ-open.dev.jsonl",
            b'{"question": "q", "answer": ["a"]}\n["a", "list"]\n',
            hallucination.load_nq_open,
            r"NQ-open\.dev\.jsonl, line 2: expected a JSON object, got list",
        ),
        (
            "truthfulqa/TruthfulQA.csv",
            b"",
            hallucination.load_truthfulqa,
            r"TruthfulQA\.csv is empty \(0 bytes\)\. Get it again",
        ),
        (
            "truthfulqa/TruthfulQA.csv",
            b"\n",
            hallucination.load_truthfulqa,
            r"TruthfulQA\.csv: empty file \(expected a header",
        ),
        (
            "truthfulqa/TruthfulQA.csv",
            b"Type,Question\nx,y\n",
            hallucination.load_truthfulqa,
            r"TruthfulQA\.csv: no column Best Answer, Correct Answers, "
            r"Incorrect Answers \(the header has Type, Question\)",
        ),
        (
            "do_not_answer/do_not_answer_en.csv",
            "id,risk_area,question\n0,Malicious Uses,q\n".encode("utf-16"),
            lambda data_dir: safety.load_docs("dna", data_dir=data_dir),
            r"do_not_answer_en\.csv: UTF-16 text; save it as UTF-8",
        ),
        (
            "safety_tuned_llamas/evaluation/I-MaliciousInstructions.json",
            json.dumps({"instructions": ["a", "b", "c"], "tags": ["crime"]}).encode(),
            lambda data_dir: safety.load_docs("malicious", data_dir=data_dir),
            r"I-MaliciousInstructions\.json: 1 tags for 3 instructions",
        ),
    ],
    ids=["empty_jsonl", "jsonl_list_line", "zero_bytes", "empty_csv", "missing_csv_column", "utf16", "tags_mismatch"],
)
def test_a_malformed_release_file_names_itself_and_the_problem(data, relative, content, load, message):
    (data / relative).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load(data_dir=str(data))


def test_the_hub_unreachable_names_the_data_directory_that_avoids_it():
    with pytest.raises(
        MissingDataError,
        match=r"nq_open: could not load .* from the Hugging Face hub .*set "
        r"MOE_RBENCH_DATA_DIR \(or data_dir=\)",
    ):
        hallucination.load_nq_open()


def test_lm_eval_ends_with_the_message_of_a_malformed_file(tiny_model, data):
    (data / "nq_open" / "NQ-open.dev.jsonl").write_text("[1, 2]\n")
    model_args, data_dir = f"pretrained={tiny_model('mixtral')}", data
    result = lm_eval_cli(model_args, "moe_rbench_nq_open", "--limit", "2", data_dir=data_dir, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith(f"{data / 'nq_open' / 'NQ-open.dev.jsonl'}, line 1: expected a JSON object, got list")


def test_few_shot_without_a_demonstration_set_names_the_missing_file(tiny_model, data):
    (data / "boss" / "amazon" / "train.tsv").unlink()
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(data)})
    lm = MoEHFLM(pretrained=str(tiny_model("llama")), device="cpu")
    with pytest.raises(FewShotError, match=r"train\.tsv of the suite's ID set .*boss/amazon/.*--num_fewshot 0"):
        lm_eval.simple_evaluate(model=lm, tasks=["moe_rbench_boss_sa_dynasent"], task_manager=manager, num_fewshot=2)


def test_moe_rbench_data_flags_empty_files(data):
    (data / "truthfulqa" / "TruthfulQA.csv").write_bytes(b"")
    result = run([str(BIN / "moe-rbench"), "data", "--data_dir", str(data)], check=False)
    assert result.returncode == 1
    assert f"MISSING: {data / 'truthfulqa' / 'TruthfulQA.csv'} (empty (0 bytes))" in result.stdout


# -- moe-rbench judge and trace ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def safety_samples(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_input_samples")
    evaluate_to(
        out,
        MoEHFLM(pretrained=str(tiny_model("llama")), device="cpu", batch_size=16),
        ["moe_rbench_safety"],
        limit=2,
        gen_kwargs="max_gen_toks=4",
    )
    return out


def judge(samples, *arguments, env=None):
    return run([str(BIN / "moe-rbench"), "judge", "--samples", str(samples), *arguments], env=env, check=False)


def test_judge_with_an_unknown_option_lists_the_judges_options(safety_samples, tmp_path):
    one_line_error(
        judge(safety_samples, "--judge", "harmfulness", "--out", str(tmp_path), "--judge_args", "modle=x"),
        "The harmfulness judge has no option modle; its options: model, device, batch_size, max_length",
    )


def test_judge_batch_size_must_be_positive(safety_samples, tmp_path):
    result = judge(safety_samples, "--judge", "refusal", "--out", str(tmp_path), "--batch_size", "0")
    assert result.returncode == 2 and "--batch_size: must be at least 1, got 0" in result.stderr


def test_judge_names_a_corrupt_line_of_a_samples_file(safety_samples, tmp_path):
    samples = tmp_path / "samples"
    shutil.copytree(safety_samples, samples)
    (path,) = samples.rglob("samples_moe_rbench_safety_cona_*.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{cut off", *lines[1:]]) + "\n")
    one_line_error(judge(samples, "--judge", "refusal"), f"{path}, line 2: not JSON", "remove that line")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_judge_names_an_unreachable_moderation_endpoint(safety_samples, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    arguments = ["--judge", "openai", "--out", str(tmp_path), "--judge_args", f"base_url={url}", "max_retries=0"]
    result = judge(safety_samples, *arguments, env={"OPENAI_API_KEY": "test-key"})
    one_line_error(result, f"Could not reach the moderation endpoint {url}/moderations", "OPENAI_BASE_URL")


def test_judge_names_a_failing_moderation_endpoint(safety_samples, tmp_path, moderation_server):
    arguments = [
        "--judge",
        "openai",
        "--out",
        str(tmp_path),
        "--judge_args",
        f"base_url={moderation_server}",
        "max_retries=1",
    ]
    result = judge(safety_samples, *arguments, env={"OPENAI_API_KEY": "server-error"})
    one_line_error(result, f"The moderation endpoint {moderation_server}/moderations answered HTTP 500 after 1 retries")


def test_trace_of_an_unrecorded_task_is_one_line(tmp_path):
    (tmp_path / "routing.json").write_text("")
    one_line_error(
        run(
            [
                str(BIN / "moe-rbench"),
                "trace",
                "--routing",
                str(tmp_path),
                "--id",
                "a",
                "--ood",
                "b",
                "--out",
                str(tmp_path / "t"),
            ],
            check=False,
        ),
        f"{tmp_path / 'routing.json'} is empty",
    )
