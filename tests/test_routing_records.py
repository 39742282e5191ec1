"""The routing record store across processes, and router tracing."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch.multiprocessing as mp
from helpers import BIN, run

from moe_rbench.trace import trace_routing, write_trace
from moe_rbench_models.routing import load_manifest, load_records
from moe_rbench_models.routing import writer as writer_module
from moe_rbench_models.routing.records import LayerArrays, RoutingDirectoryError
from moe_rbench_models.routing.writer import RecordWriter, new_run_id

LAYERS = [
    {"key": "decoder.0", "name": "model.layers.0.mlp.gate", "side": "decoder", "layer": 0, "num_experts": 4, "top_k": 2}
]
HEADER = {"version": 1, "logits": False}


def write_documents(writer: RecordWriter, task: str, doc_ids, expert: int, tokens_per_doc: int = 3) -> None:
    for doc_id in doc_ids:
        ids = np.tile(np.array([[expert, (expert + 1) % 4]], dtype=np.int16), (tokens_per_doc, 1))
        arrays = {"decoder.0": LayerArrays(ids=ids, weights=np.full((tokens_per_doc, 2), 0.5, dtype=np.float16))}
        tokens = np.arange(tokens_per_doc, dtype=np.int32) + doc_id
        span = writer.add_span(task, "decoder", tokens, tokens + 1, arrays)
        writer.add_record("loglikelihood", task, doc_id, 0, 0, [span], [], doc_key=f"document {doc_id}")


def _rank_process(rank: int, world_size: int, port: int, out: str, run_id: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    writer_module.SHARD_BYTES = 1  # a shard per record: many shards, and more on rank 1 than on rank 0
    writer = RecordWriter(out, LAYERS, HEADER, rank=rank, world_size=world_size, run_id=run_id)
    # rank 1 has no requests of the second type: lm-eval skips that call there, so nothing may wait for it
    for call, task in enumerate(["first_call", "second_call"][: 2 - rank]):
        docs = range(rank, 10 + 4 * rank, world_size)  # rank 0: 0,2,..,8; rank 1: 1,3,..,13
        write_documents(writer, task, docs, expert=rank + 2 * call)
        writer.finish_call()
    dist.barrier()  # lm-eval's own gather after every request call, before the main process reports
    writer.commit()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_records_of_every_rank_reach_the_main_process_once_even_from_an_idle_rank(tmp_path):
    out = tmp_path / "routing"
    context = mp.get_context("spawn")
    port, run_id = free_port(), new_run_id()
    processes = [context.Process(target=_rank_process, args=(rank, 2, port, str(out), run_id)) for rank in (0, 1)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0], "a process hung or failed"
    records = list(load_records(out))
    keys = [(record.task, record.doc_id) for record in records]
    expected = {("first_call", doc) for rank in (0, 1) for doc in range(rank, 10 + 4 * rank, 2)}
    expected |= {("second_call", doc) for doc in range(0, 10, 2)}
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected
    for record in records:  # each record's arrays arrived intact: the expert its rank wrote
        rank = record.doc_id % 2
        call = 0 if record.task == "first_call" else 1
        assert record.layers["decoder.0"].context_ids[:, 0].tolist() == [rank + 2 * call] * 3
        assert record.context_tokens.tolist() == [record.doc_id, record.doc_id + 1, record.doc_id + 2]
    manifest = load_manifest(out)
    assert manifest["processes"] == 2 and manifest["run"] == run_id
    assert manifest["summary"]["first_call"]["decoder.0"]["tokens"] == 3 * len(
        [k for k in expected if k[0] == "first_call"]
    )


def commit_run(directory, task, docs, expert, overwrite=False) -> RecordWriter:
    writer = RecordWriter(directory, LAYERS, HEADER, overwrite=overwrite)
    write_documents(writer, task, docs, expert=expert)
    writer.finish_call()
    writer.commit()
    return writer


def test_a_new_run_replaces_the_previous_one_only_when_allowed_and_only_once_complete(tmp_path):
    commit_run(tmp_path, "run0", range(5), expert=0)
    with pytest.raises(
        RoutingDirectoryError, match=r"holds the routing records of an earlier run .* routing_overwrite=true"
    ):
        RecordWriter(tmp_path, LAYERS, HEADER)
    second = RecordWriter(tmp_path, LAYERS, HEADER, overwrite=True)
    write_documents(second, "run1", range(2), expert=1)
    second.finish_call()
    assert [(r.task, r.doc_id) for r in load_records(tmp_path)] == [("run0", i) for i in range(5)]  # not yet
    second.commit()
    assert [(r.task, r.doc_id) for r in load_records(tmp_path)] == [("run1", 0), ("run1", 1)]
    assert sorted(path.name for path in tmp_path.glob("*.npz")) == load_manifest(tmp_path)["shards"]


def test_a_run_that_never_completes_leaves_the_earlier_records_and_is_cleaned_up_later(tmp_path):
    commit_run(tmp_path, "run0", range(3), expert=0)
    failed = RecordWriter(tmp_path, LAYERS, HEADER, overwrite=True)
    write_documents(failed, "failed", range(4), expert=2)
    failed.finish_call()  # ... and the evaluation fails: no commit
    assert {r.task for r in load_records(tmp_path)} == {"run0"}
    commit_run(tmp_path, "run2", range(1), expert=1, overwrite=True)
    assert {r.task for r in load_records(tmp_path)} == {"run2"}
    assert sorted(path.name for path in tmp_path.iterdir() if "pending" not in path.name) == sorted(
        load_manifest(tmp_path)["shards"] + ["routing.json"]
    )


def test_a_manifest_naming_files_outside_the_directory_deletes_nothing(tmp_path):
    outside = tmp_path / "precious.npz"
    outside.write_bytes(b"keep me")
    routing = tmp_path / "routing"
    commit_run(routing, "run0", range(2), expert=0)
    manifest = load_manifest(routing)
    for name in ("../precious.npz", str(outside), "notes.txt"):
        (routing / "routing.json").write_text(json.dumps({**manifest, "shards": [name]}))
        with pytest.raises(RoutingDirectoryError, match=r"not a shard of this directory"):
            list(load_records(routing))
        with pytest.raises(RoutingDirectoryError, match=r"not a shard of this directory"):
            RecordWriter(routing, LAYERS, HEADER)
        commit_run(routing, "run1", range(1), expert=1, overwrite=True)  # replaces the bad manifest
    assert outside.read_bytes() == b"keep me"
    (routing / "notes.txt").write_text("mine")
    commit_run(routing, "run2", range(1), expert=1, overwrite=True)
    assert (routing / "notes.txt").read_text() == "mine"  # not a file of ours: never deleted


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("{not json", "line 1: not a routing manifest"), ("[1, 2]", "is not a routing manifest")],
)
def test_a_corrupt_manifest_is_reported_with_the_fix(tmp_path, content, message):
    (tmp_path / "routing.json").write_text(content)
    with pytest.raises(RoutingDirectoryError, match=message + r".*Remove .*routing\.json"):
        list(load_records(tmp_path))
    with pytest.raises(RoutingDirectoryError, match=message + r".*routing_overwrite=true"):
        RecordWriter(tmp_path, LAYERS, HEADER)
    commit_run(tmp_path, "fresh", range(2), expert=0, overwrite=True)
    assert len(list(load_records(tmp_path))) == 2


def test_a_deleted_shard_is_named(tmp_path):
    commit_run(tmp_path, "run0", range(2), expert=0)
    (name,) = load_manifest(tmp_path)["shards"]
    (tmp_path / name).unlink()
    with pytest.raises(RoutingDirectoryError, match=rf"lists {name}, which is missing.*Record them again"):
        list(load_records(tmp_path))


WRITE_A_RUN = """
import sys
import numpy as np
from moe_rbench_models.routing.records import LayerArrays
from moe_rbench_models.routing.writer import RecordWriter

LAYERS = [{"key": "decoder.0", "name": "gate", "side": "decoder", "layer": 0, "num_experts": 4, "top_k": 2}]
writer = RecordWriter(sys.argv[1], LAYERS, {"logits": False}, overwrite=True)
for doc in range(200):  # about 300 KB of records
    ids = np.zeros((100, 2), dtype=np.int16)
    span = writer.add_span("big", "decoder", np.arange(100), np.arange(100),
                           {"decoder.0": LayerArrays(ids, np.ones((100, 2), dtype=np.float16))})
    writer.add_record("loglikelihood", "big", doc, 0, 0, [span], [])
writer.commit()
"""


def run_writer(directory, limit_bytes=None):
    """WRITE_A_RUN in a fresh process, with a file-size limit (a full disk); permission bits apply even to root."""

    def limit():
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    # root ignores permission bits unless it runs without the capabilities that override them
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, "-c", WRITE_A_RUN, str(directory)],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
    )


def test_a_full_disk_leaves_the_earlier_records_and_a_usable_directory(tmp_path):
    commit_run(tmp_path, "earlier", range(3), expert=0)
    writer_module_limit = 64 * 1024  # shards of ~300 KB cannot be written
    full = run_writer(tmp_path, limit_bytes=writer_module_limit)
    assert full.returncode != 0
    assert (
        f"Could not write routing records to {tmp_path} (File too large); the records of earlier runs there are "
        "untouched" in full.stderr
    )
    assert {r.task for r in load_records(tmp_path)} == {"earlier"}  # routing.json was never half written
    assert run_writer(tmp_path).returncode == 0  # the next run works
    assert {r.task for r in load_records(tmp_path)} == {"big"}


def test_an_unwritable_routing_directory_fails_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RoutingDirectoryError, match=r"a_file is a file, not a directory"):
        RecordWriter(tmp_path / "a_file", LAYERS, HEADER)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    result = run_writer(read_only)
    assert result.returncode != 0
    assert f"Could not write routing records to {read_only} (Permission denied)" in result.stderr
    assert not any(read_only.iterdir())


def test_reading_a_directory_without_records_names_the_fix(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"routing\.json is missing\. Write them with `--model moe_hf --model_args \.\.\.,routing_out=DIR`",
    ):
        list(load_records(tmp_path))


def test_trace_measures_l1_between_expert_usage_distributions(tmp_path):
    writer = RecordWriter(tmp_path / "routing", LAYERS, HEADER)
    write_documents(writer, "id_set", range(4), expert=0)  # experts 0 and 1, half each
    write_documents(writer, "ood_same", range(4), expert=0)
    write_documents(writer, "ood_shifted", range(2), expert=2)  # experts 2 and 3: disjoint
    write_documents(writer, "ood_shifted", range(2, 4), expert=0)
    writer.commit()
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
    writer.commit()
    with pytest.raises(ValueError, match=r"No records of OOD task\(s\) moe_rbench_style_\* .* recorded tasks: id_set"):
        trace_routing(tmp_path, "id_set", ["moe_rbench_style_*"])
    with pytest.raises(ValueError, match=r"No records of ID task 'sst2'"):
        trace_routing(tmp_path, "sst2", ["id_set"])


# -- bad records and outputs: one line, naming the file and the fix --------------------------------------------


def one_line_error(result, command: str, *fragments: str) -> str:
    """Exit 2, no traceback, the error one line `moe-rbench <command>: ...` holding every fragment."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"moe-rbench {command}: "), result.stderr
    assert all(fragment in lines[-1] for fragment in fragments), lines[-1]
    return lines[-1]


def tool(command: str, routing, out, *sets: str, prefix: tuple = ()):
    """`moe-rbench trace --id A --ood B` or `moe-rbench attribute --a A --b B` over a routing directory."""
    flags = ["--id", sets[0], "--ood", sets[1]] if command == "trace" else ["--a", sets[0], "--b", sets[1]]
    arguments = [str(BIN / "moe-rbench"), command, "--routing", str(routing), *flags, "--out", str(out)]
    return run([*prefix, *arguments], check=False)


@pytest.fixture
def two_tasks(tmp_path):
    """A routing directory of two tasks of 4 documents each, written by the writer."""
    writer = RecordWriter(tmp_path / "routing", LAYERS, HEADER)
    write_documents(writer, "first", range(4), expert=0)
    write_documents(writer, "second", range(4), expert=2)
    writer.commit()
    return tmp_path / "routing"


def damage(shard, how: str) -> None:
    if how == "truncated":
        shard.write_bytes(shard.read_bytes()[:300])
    elif how == "no records array":
        with np.load(shard) as arrays:
            kept = {name: arrays[name] for name in arrays.files if name != "records"}
        with shard.open("wb") as file:
            np.savez(file, **kept)
    else:  # a records array whose entries lack their spans
        with np.load(shard) as arrays:
            kept = {name: arrays[name] for name in arrays.files}
        kept["records"] = np.array(json.dumps([{"task": "first", "doc_id": 0}]))
        with shard.open("wb") as file:
            np.savez(file, **kept)


@pytest.mark.parametrize(
    ("command", "how", "problem"),
    [
        ("trace", "truncated", "unreadable (BadZipFile"),
        ("attribute", "truncated", "unreadable (BadZipFile"),
        ("trace", "no records array", "no 'records' array"),
    ],
)
def test_a_damaged_shard_is_named_with_the_fix(two_tasks, tmp_path, command, how, problem):
    (shard,) = load_manifest(two_tasks)["shards"]
    damage(two_tasks / shard, how)
    result = tool(command, two_tasks, tmp_path / "out", "first", "second")
    one_line_error(result, command, f"{two_tasks / shard}: {problem}", "Record the routing again")


def test_an_incomplete_record_names_its_shard(two_tasks):
    (shard,) = load_manifest(two_tasks)["shards"]
    damage(two_tasks / shard, "incomplete record")
    with pytest.raises(RoutingDirectoryError, match=rf"{shard}: a record it holds is incomplete \(KeyError: 'context'"):
        list(load_records(two_tasks))


@pytest.mark.parametrize("command", ["trace", "attribute"])
def test_a_missing_or_empty_routing_directory_is_one_line(tmp_path, command):
    (tmp_path / "empty").mkdir()
    for routing, why in [("nowhere", "there is no such directory"), ("empty", "routing.json is missing")]:
        result = tool(command, tmp_path / routing, tmp_path / "out", "first", "second")
        one_line_error(result, command, f"No routing records in {tmp_path / routing}: {why}", "routing_out=DIR")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]  # no --out made for nothing


@pytest.mark.parametrize("command", ["trace", "attribute"])
def test_an_output_that_is_a_file_or_cannot_be_written_is_refused_before_any_work(two_tasks, tmp_path, command):
    (tmp_path / "file").write_text("mine")
    result = tool(command, two_tasks, tmp_path / "file", "first", "second")
    one_line_error(result, command, f"--out {tmp_path / 'file'} is a file; give a directory")
    result = tool(command, two_tasks, tmp_path / "file" / "out", "first", "second")
    one_line_error(result, command, f"is under {tmp_path / 'file'}, which is a file")
    assert (tmp_path / "file").read_text() == "mine"
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    # root ignores permission bits unless it runs without the capabilities that override them
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--") if os.geteuid() == 0 else ()
    result = tool(command, two_tasks, read_only / "out", "first", "second", prefix=prefix)
    one_line_error(result, command, f"cannot write in {read_only} (Permission denied)")
    assert not any(read_only.iterdir())


# -- one run at a time in a routing directory ------------------------------------------------------------------


def lock_of(directory) -> dict:
    return json.loads((directory / "routing.lock").read_text())


def test_a_second_run_is_refused_while_the_first_writes_and_may_follow_it(tmp_path):
    first = RecordWriter(tmp_path, LAYERS, HEADER)
    owner = lock_of(tmp_path)
    assert (owner["run"], owner["pid"], owner["host"]) == (first.run_id, os.getpid(), socket.gethostname())
    # another live process of this host holds it (the test's parent process stands in for it)
    (tmp_path / "routing.lock").write_text(json.dumps({**owner, "run": "other-run", "pid": os.getppid()}))
    with pytest.raises(
        RoutingDirectoryError, match=rf"being written by another run: other-run, process {os.getppid()}"
    ):
        RecordWriter(tmp_path, LAYERS, HEADER, overwrite=True)
    with pytest.raises(RoutingDirectoryError, match=r"was taken over by run other-run .* will not be published"):
        write_documents(first, "first", range(2), expert=0)
        first.finish_call()  # the first run finds it has lost the directory at its next write
    # a process of another host is never judged gone: remove its lock by hand
    (tmp_path / "routing.lock").write_text(json.dumps({**owner, "run": "far", "host": "elsewhere", "pid": 1}))
    with pytest.raises(RoutingDirectoryError, match=r"process 1 on elsewhere .* if it is no longer running, remove"):
        RecordWriter(tmp_path, LAYERS, HEADER, overwrite=True)
    (tmp_path / "routing.lock").unlink()
    commit_run(tmp_path, "after", range(2), expert=1, overwrite=True)
    assert {r.task for r in load_records(tmp_path)} == {"after"} and not (tmp_path / "routing.lock").exists()


def test_a_lock_of_a_process_that_is_gone_is_taken_over(tmp_path, caplog):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    (tmp_path / "routing.lock").write_text(
        json.dumps({"run": "dead-run", "pid": dead, "host": socket.gethostname(), "started": "earlier"})
    )
    commit_run(tmp_path, "taken", range(2), expert=0)
    assert (
        f"names run dead-run (process {dead}" in caplog.text and "is no longer running; taking it over" in caplog.text
    )
    assert {r.task for r in load_records(tmp_path)} == {"taken"}


HOLD_A_RUN = """
import sys
import numpy as np
from moe_rbench_models.routing.records import LayerArrays
from moe_rbench_models.routing.writer import RecordWriter

LAYERS = [{"key": "decoder.0", "name": "gate", "side": "decoder", "layer": 0, "num_experts": 4, "top_k": 2}]
writer = RecordWriter(sys.argv[1], LAYERS, {"logits": False}, overwrite=True)
ids = np.zeros((3, 2), dtype=np.int16)
arrays = {"decoder.0": LayerArrays(ids, ids.astype(np.float16))}
span = writer.add_span("held", "decoder", np.arange(3), np.arange(3), arrays)
writer.add_record("loglikelihood", "held", 0, 0, 0, [span], [])
writer.finish_call()
print(writer.run_id, flush=True)
if sys.stdin.readline().strip() == "commit":
    writer.commit()
"""


def test_two_processes_take_turns_and_a_killed_one_leaves_a_lock_the_next_takes_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_RUN, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    run_id = holder.stdout.readline().strip()
    try:
        with pytest.raises(RoutingDirectoryError, match=rf"another run: {run_id}, process {holder.pid} on "):
            commit_run(tmp_path, "second", range(2), expert=1, overwrite=True)
        holder.communicate("commit\n", timeout=60)
    finally:
        holder.kill()
    assert holder.returncode == 0 and {r.task for r in load_records(tmp_path)} == {"held"}
    commit_run(tmp_path, "second", range(2), expert=1, overwrite=True)  # the first has finished: its turn is over
    killed = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_RUN, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    killed.stdout.readline()
    killed.kill()  # SIGKILL: no clean-up runs, the lock stays
    killed.wait(timeout=60)
    assert lock_of(tmp_path)["pid"] == killed.pid
    commit_run(tmp_path, "third", range(2), expert=2, overwrite=True)
    assert {r.task for r in load_records(tmp_path)} == {"third"}
