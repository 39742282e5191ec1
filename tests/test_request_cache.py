"""`--cache_requests true` with another data directory: the requests are those of the documents read now.

lm-eval keys its request cache by task name, few-shot count and rank; our tasks add a digest of their documents
and configuration (moe_rbench_tasks/task.py), so the requests cached for other documents are never scored against
these documents' labels.
"""

from __future__ import annotations

import json
import shutil

import lm_eval.caching.cache
import pytest
from helpers import FIXTURE_DATA, evaluate_to, lm_eval_outputs

from moe_rbench_models import MoEHFLM

TASK = "moe_rbench_sst2"


@pytest.fixture
def changed_data(tmp_path):
    """A copy of the fixture data whose SST-2 documents have other texts and the opposite labels."""
    data = shutil.copytree(FIXTURE_DATA, tmp_path / "changed")
    path = data / "decodingtrust" / "style.json"
    release = json.loads(path.read_text())
    for row in release["dev"]["base"]:
        row["sentence"], row["label"] = f"CHANGED {row['sentence']}", str(1 - int(row["label"]))
    path.write_text(json.dumps(release))
    return data


def test_cached_requests_of_other_documents_are_not_reused(tiny_model, tmp_path, changed_data, monkeypatch):
    monkeypatch.setattr(lm_eval.caching.cache, "PATH", str(tmp_path / "cache"))
    lm = MoEHFLM(pretrained=str(tiny_model("mixtral")), device="cpu")
    for run, data in (("first", FIXTURE_DATA), ("changed", changed_data), ("again", FIXTURE_DATA)):
        evaluate_to(tmp_path / run, lm, [TASK], data_dir=data, limit=3, cache_requests=True)
    samples = lm_eval_outputs(tmp_path / "changed")[1][TASK]
    for sample in samples:
        assert sample["doc"]["sentence"].startswith("CHANGED ")
        assert sample["doc"]["sentence"] in sample["arguments"]["gen_args_0"]["arg_0"]  # the prompt of this document
    first = lm_eval_outputs(tmp_path / "first")[1][TASK]
    assert [s["doc"]["label"] for s in samples] == [1 - s["doc"]["label"] for s in first]
    assert [s["target"] for s in samples] != [s["target"] for s in first]  # scored against these labels
    # the same documents find their cached requests again: one cache entry per content, not none
    assert len(list((tmp_path / "cache").glob(f"requests-{TASK}-*"))) == 2
