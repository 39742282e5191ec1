"""The routing record store across processes, and router tracing."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch.multiprocessing as mp

from moe_rbench_models.routing import load_manifest, load_records, trace_routing, write_trace
from moe_rbench_models.routing import records as records_module
from moe_rbench_models.routing.records import LayerArrays, RecordWriter

LAYERS = [{"key": "decoder.0", "name": "model.layers.0.mlp.gate", "side": "decoder", "layer": 0, "num_experts": 4,
           "top_k": 2}]  # fmt: skip
HEADER = {"version": 1, "logits": False}


def write_documents(writer: RecordWriter, task: str, doc_ids, expert: int, tokens_per_doc: int = 3) -> None:
    for doc_id in doc_ids:
        ids = np.tile(np.array([[expert, (expert + 1) % 4]], dtype=np.int16), (tokens_per_doc, 1))
        arrays = {"decoder.0": LayerArrays(ids=ids, weights=np.full((tokens_per_doc, 2), 0.5, dtype=np.float16))}
        tokens = np.arange(tokens_per_doc, dtype=np.int32) + doc_id
        span = writer.add_span(task, "decoder", tokens, tokens + 1, arrays)
        writer.add_record("loglikelihood", task, doc_id, 0, 0, [span], [], doc_key=f"document {doc_id}")


def _rank_process(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    records_module.SHARD_BYTES = 1  # a shard per record: many shards, and more on rank 1 than on rank 0
    writer = RecordWriter(out, LAYERS, HEADER, rank=rank, world_size=world_size)
    for call, task in enumerate(["first_call", "second_call"]):
        docs = range(rank, 10 + 4 * rank, world_size)  # rank 0: 0,2,..,8; rank 1: 1,3,..,13
        write_documents(writer, task, docs, expert=rank + 2 * call)
        writer.finish_call()
    writer.close()
    assert rank == 0 or not writer._local_dir.exists()  # a non-main rank's temporary shards are gone
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_records_of_every_rank_reach_the_main_process_once(tmp_path):
    out = tmp_path / "routing"
    mp.spawn(_rank_process, args=(2, free_port(), str(out)), nprocs=2, join=True)
    records = list(load_records(out))
    keys = [(record.task, record.doc_id) for record in records]
    expected = {(task, doc) for task in ("first_call", "second_call")
                for rank in (0, 1) for doc in range(rank, 10 + 4 * rank, 2)}  # fmt: skip
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected
    for record in records:  # each record's arrays arrived intact: the expert its rank wrote
        rank = record.doc_id % 2
        call = 0 if record.task == "first_call" else 1
        assert record.layers["decoder.0"].context_ids[:, 0].tolist() == [rank + 2 * call] * 3
        assert record.context_tokens.tolist() == [record.doc_id, record.doc_id + 1, record.doc_id + 2]
    summary = load_manifest(out)["summary"]
    assert summary["first_call"]["decoder.0"]["tokens"] == 3 * len([k for k in expected if k[0] == "first_call"])


def test_a_new_run_replaces_the_previous_one(tmp_path):
    for run, docs in enumerate([range(5), range(2)]):
        writer = RecordWriter(tmp_path, LAYERS, HEADER)
        write_documents(writer, f"run{run}", docs, expert=run)
        writer.finish_call()
    assert [(r.task, r.doc_id) for r in load_records(tmp_path)] == [("run1", 0), ("run1", 1)]
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_reading_a_directory_without_records_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"routing\.json is missing\. Write them with `--model moe_hf --model_args \.\.\.,routing_out=DIR`"):
        list(load_records(tmp_path))


def test_trace_measures_l1_between_expert_usage_distributions(tmp_path):
    writer = RecordWriter(tmp_path / "routing", LAYERS, HEADER)
    write_documents(writer, "id_set", range(4), expert=0)  # experts 0 and 1, half each
    write_documents(writer, "ood_same", range(4), expert=0)
    write_documents(writer, "ood_shifted", range(2), expert=2)  # experts 2 and 3: disjoint
    write_documents(writer, "ood_shifted", range(2, 4), expert=0)
    writer.finish_call()
    rows = {(row.ood_task, row.layer): row for row in trace_routing(tmp_path / "routing", "id_set", ["ood_*"])}
    assert rows[("ood_same", "decoder.0")].distribution_l1 == 0 and rows[("ood_same", "decoder.0")].mean_pair_l1 == 0
    shifted = rows[("ood_shifted", "decoder.0")]
    # id: (.5, .5, 0, 0); shifted: (.25, .25, .25, .25) -> L1 = 1.0; aligned pairs: 2 disjoint (2.0) and 2 equal (0)
    assert shifted.distribution_l1 == pytest.approx(1.0) and shifted.mean_pair_l1 == pytest.approx(1.0)
    assert shifted.pairs == 4

    files = write_trace(list(rows.values()), tmp_path / "trace", "id_set")
    assert [path.name for path in files] == ["trace.md", "trace.csv", "trace.json", "trace.png"]
    assert "| ood_shifted | decoder.0 | 1.0000 | 1.0000 | 4 |" in (tmp_path / "trace" / "trace.md").read_text()
    assert json.loads((tmp_path / "trace" / "trace.json").read_text())["id_task"] == "id_set"
    assert (tmp_path / "trace" / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trace_names_missing_tasks(tmp_path):
    writer = RecordWriter(tmp_path, LAYERS, HEADER)
    write_documents(writer, "id_set", range(2), expert=0)
    writer.finish_call()
    with pytest.raises(ValueError, match=r"No records of OOD task\(s\) moe_rbench_style_\* .* recorded tasks: id_set"):
        trace_routing(tmp_path, "id_set", ["moe_rbench_style_*"])
    with pytest.raises(ValueError, match=r"No records of ID task 'sst2'"):
        trace_routing(tmp_path, "sst2", ["id_set"])
