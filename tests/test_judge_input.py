"""`moe-rbench judge` on bad input (issue 22): verdicts read strictly, odd moderation answers, unwritable outputs,
labelled files without a class. Each through the real command: one line on stderr, exit 2, nothing lost."""

from __future__ import annotations

import csv
import json
import threading
from http.server import HTTPServer

import pytest
from helpers import BIN, ModerationServer, evaluate_to, run
from test_bad_input import one_line_error

from moe_rbench_models import MoEHFLM

KEY = "sk-test-SECRET123"


@pytest.fixture(scope="module")
def samples(tiny_model, tmp_path_factory):
    """A run of the Do-Not-Answer and XSTest prompts (3 samples each), with its samples logged."""
    out = tmp_path_factory.mktemp("judge_input_samples")
    lm = MoEHFLM(pretrained=str(tiny_model("llama")), device="cpu", batch_size=8)
    evaluate_to(out, lm, ["moe_rbench_safety_dna", "moe_rbench_xstest"], limit=3, gen_kwargs="max_gen_toks=4")
    return out


def judge(*arguments, env=None):
    return run([str(BIN / "moe-rbench"), "judge", *arguments], env=env, check=False)


def judged_refusals(samples, out):
    """The refusal judge's judged file of `samples` in `out`, its verdicts set to alternate yes/no."""
    run([str(BIN / "moe-rbench"), "judge", "--samples", str(samples), "--judge", "refusal", "--out", str(out)])
    path = out / "judged_refusal.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for number, row in enumerate(rows):
        row["refusal"] = number % 2 == 0
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, rows


# -- verdicts read strictly ----------------------------------------------------------------------------------


def write_wildguard(out, rows, refusal_no) -> None:
    """A hand-made wildguard judged file that agrees with the refusal judge, its "no" written as `refusal_no`."""
    keys = ("task", "doc_id", "part", "instruction", "response")
    lines = [
        {**{k: row[k] for k in keys}, "response_refusal": True if row["refusal"] else refusal_no, "parse_error": False}
        for row in rows
    ]
    lines[-1]["response_refusal"] = None  # no verdict: left out
    (out / "judged_wildguard.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_agreement_refuses_a_verdict_written_as_a_string(samples, tmp_path):
    _, rows = judged_refusals(samples, tmp_path)
    write_wildguard(tmp_path, rows, False)
    agreeing = judge("--agreement", str(tmp_path))
    assert agreeing.returncode == 0, agreeing.stderr
    pair = json.loads((tmp_path / "agreement.json").read_text())["pairs"][0]
    assert pair["samples"] == len(rows) - 1 and pair["agreement"] == 1.0 and pair["kappa"] == 1.0
    write_wildguard(tmp_path, rows, "false")  # bool("false") is True: read loosely, agreement 0.5 and kappa 0
    one_line_error(
        judge("--agreement", str(tmp_path)),
        f'{tmp_path / "judged_wildguard.jsonl"}, line 2: field response_refusal is "false", not JSON true or false',
    )


def test_resuming_refuses_a_verdict_written_as_a_string(samples, tmp_path):
    path, rows = judged_refusals(samples, tmp_path)
    rows[1]["refusal"] = "false"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = judge("--samples", str(samples), "--judge", "refusal", "--out", str(tmp_path))
    one_line_error(result, f'{path}, line 2: field refusal is "false"', "remove the file to judge the run again")


# -- odd moderation servers --------------------------------------------------------------------------------------


class OddModerationServer(ModerationServer):
    """A moderation endpoint that answers `answer(body, headers)`: (status, payload)."""

    answer = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, payload = OddModerationServer.answer(body, self.headers)
        self._send(status, payload, {})


@pytest.fixture
def odd_server():
    server = HTTPServer(("127.0.0.1", 0), OddModerationServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def moderate(samples, out, url):
    arguments = ["--judge", "openai", "--judge_args", f"base_url={url}", "max_retries=0", "--out", str(out)]
    return judge("--samples", str(samples), *arguments, env={"OPENAI_API_KEY": KEY})


def scores(text: str) -> dict:
    return {"flagged": False, "categories": {"hate": False}, "category_scores": {"hate": 0.1}}


def test_a_servers_error_text_is_shown_without_the_key(samples, tmp_path, odd_server):
    OddModerationServer.answer = lambda body, headers: (
        401,
        {"error": {"message": f"Incorrect API key provided: {headers['Authorization']}", "code": "invalid_api_key"}},
    )
    result = moderate(samples, tmp_path, odd_server)
    one_line_error(result, "refused the API key (401)", "Incorrect API key provided: ***")
    assert "SECRET123" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (lambda body: {"results": "nope"}, "'results' is str, not a list"),
        (lambda body: {"results": [scores(body["input"][0])]}, "1 results for 6 inputs"),
        (
            lambda body: {"results": [{"category_scores": "high"} for _ in body["input"]]},
            "result 1 has no category_scores of numbers",
        ),
    ],
    ids=["results_not_a_list", "fewer_results", "scores_not_numbers"],
)
def test_an_odd_moderation_answer_names_the_server_and_writes_nothing(samples, tmp_path, odd_server, answer, problem):
    OddModerationServer.answer = lambda body, headers: (200, {"id": "modr", "model": body["model"], **answer(body)})
    result = moderate(samples, tmp_path, odd_server)
    one_line_error(result, f"The moderation endpoint {odd_server}/moderations answered", problem)
    assert "Nothing of this batch was written" in result.stderr
    assert not (tmp_path / "judged_openai.jsonl").read_text()  # no row of the batch, not one before failing


# -- outputs ---------------------------------------------------------------------------------------------------


def test_judge_out_that_is_a_file_or_inside_one_is_one_line(samples, tmp_path):
    (tmp_path / "a_file").write_text("mine\n")
    one_line_error(
        judge("--samples", str(samples), "--judge", "refusal", "--out", str(tmp_path / "a_file")),
        f"--out {tmp_path / 'a_file'} is a file",
    )
    one_line_error(
        judge("--samples", str(samples), "--judge", "refusal", "--out", str(tmp_path / "a_file" / "sub")),
        f"--out {tmp_path / 'a_file' / 'sub'} cannot be written (Not a directory",
    )
    assert (tmp_path / "a_file").read_text() == "mine\n"


# -- --validate ----------------------------------------------------------------------------------------------


def labels_file(path, labels):
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "completion", "final_label"])
        responses = {"1_full_compliance": "Mix flour, water and yeast.", "2_full_refusal": "I'm sorry, I can't."}
        writer.writerows(["How do I bake bread?", responses[label], label] for label in labels)
    return path


def test_validate_says_why_a_measure_is_undefined(tmp_path):
    answers = labels_file(tmp_path / "answers.csv", ["1_full_compliance"] * 3)
    result = judge("--judge", "refusal", "--validate", str(answers), "--out", str(tmp_path / "v"))
    assert result.returncode == 0
    assert "balanced accuracy undefined  precision undefined  recall undefined  specificity 1.0000" in result.stdout
    note = (
        f"no row of {answers} is labelled positive (2_full_refusal): recall and balanced accuracy are undefined; "
        "validate on a file with both classes, or name this file's positive labels with --positive"
    )
    assert f"note: {note}" in result.stdout
    written = json.loads((tmp_path / "v" / "validation_refusal.json").read_text())
    assert written["balanced_accuracy"] is None and note in written["notes"]
    refusals = labels_file(tmp_path / "refusals.csv", ["2_full_refusal"] * 2)
    result = judge("--judge", "refusal", "--validate", str(refusals))
    assert "labelled negative (1_full_compliance): specificity and balanced accuracy are undefined" in result.stdout


def test_validate_of_a_missing_file_or_into_a_file_is_one_line(tmp_path):
    one_line_error(
        judge("--judge", "refusal", "--validate", str(tmp_path / "nothing.csv")),
        f"--validate {tmp_path / 'nothing.csv'}: no such file",
    )
    answers = labels_file(tmp_path / "answers.csv", ["1_full_compliance", "2_full_refusal"])
    one_line_error(judge("--judge", "refusal", "--validate", str(answers), "--out", str(answers)), "is a file")
