"""Writing a routing directory: a run owns it, writes beside the earlier run, and replaces it atomically.

A run (one `moe_hf` model with `routing_out=DIR`) gets an id; each of its processes writes shards
`routing-<run>-r<rank>-<n>.npz` and, after each lm-eval request call, a pending manifest
`routing-<run>-r<rank>.pending.json` (the shards it wrote and its expert counts) into DIR. Nothing else is
touched while the run lasts, so the records of the earlier run stay readable, and a run that fails leaves
them as they were. When the evaluation has finished (`commit`, called by `moe_hf` once lm-eval asks for the
model's info, or by `close()`), the main process merges every process's pending manifest into `routing.json`
(written to a temporary file and renamed over the old one) and only then deletes the earlier run's shards.

Safety rules: files are deleted only if their names match this module's own patterns and they sit directly in
DIR (a manifest naming `../x` or an absolute path is an error, never a deletion); a directory holding an
earlier run is refused unless `overwrite=True`; writability is checked before any work; every write error
names DIR and says the earlier records are untouched.

One run at a time (`RoutingLock`): the main process takes `DIR/routing.lock` (naming the run, process id, host
and start time) when its writer starts, checks it before every write, and releases it when the run is published,
abandoned (`abandon()`), garbage-collected or its process exits. A second run while the first holds it is refused,
naming the owner: two `lm_eval` processes with one routing_out, or `accelerate launch` of a model that runs every
process as rank 0 (each its own run), would otherwise interleave their shards and each publish deletes the
other's. A lock whose process is gone (same host, no such process id) is taken over with a warning; one of another
host is never judged stale (remove it by hand if its run is known to be dead). A lock of this same process is taken
over too (a run that failed in a notebook or test, its model still referenced): the run it belonged to is refused at
its next write, so the two never interleave. The other processes of one run (rank > 0, the main process's run id)
do not take it, but are refused when another live run holds it. Several processes (`accelerate launch`) need DIR to be
one directory they all see (a local disk on one machine, a shared filesystem across machines): there is no
collective per request call, which a process with no requests of a type would skip.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe_rbench_models.routing.records import (
    MANIFEST,
    VERSION,
    LayerArrays,
    RoutingDirectoryError,
    expert_counts,
    load_manifest,
    stored_layer_summary,
)

logger = logging.getLogger(__name__)

SHARD_BYTES = 32 * 2**20
RUN_ID = r"\d{8}T\d{6}-[0-9a-f]{8}"
PENDING = re.compile(rf"routing-(?P<run>{RUN_ID})-r(?P<rank>\d{{2}})\.pending\.json")
RUN_SHARD = re.compile(rf"routing-(?P<run>{RUN_ID})-r\d{{2}}-\d{{5}}\.npz")
LEGACY_SHARD = re.compile(r"routing-r\d{2}-\d{5}\.npz")  # records version 1


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"


@dataclass
class _Counts:
    load: np.ndarray  # [E] assignments per expert
    tokens: int = 0
    dropped: int = 0
    can_drop: bool = False

    def to_json(self) -> dict:
        return {"load": self.load.tolist(), "tokens": self.tokens, "dropped": self.dropped, "can_drop": self.can_drop}


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


LOCK = "routing.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RoutingLock:
    """`DIR/routing.lock`: the run that owns a routing directory (see the module docstring)."""

    def __init__(self, directory: Path, run_id: str) -> None:
        self.path, self.run_id = directory / LOCK, run_id
        self.owner = {"run": run_id, "pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
        self.held = False

    def holder(self) -> dict | None:
        """The lock's owner (None: no lock); an unreadable lock is an error naming it."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = None
        if not isinstance(holder, dict) or not {"run", "pid", "host"} <= holder.keys():
            raise RoutingDirectoryError(
                f"{self.path} is not a lock moe_hf wrote ({text[:60]!r}); if no run is writing to {self.path.parent}, "
                "remove it"
            )
        return holder

    def check(self) -> None:
        """Refuse when another live run holds the lock (the other processes of this run: rank > 0)."""
        holder = self.holder()
        if holder is not None and holder["run"] != self.run_id and not self._gone(holder):
            raise self._busy(holder)

    def acquire(self) -> None:
        """Hold the lock (again, after a release): create it, or take over one whose run is gone."""
        for _ in range(3):
            holder = self.holder()
            if holder is not None and holder["run"] == self.run_id:
                self.held = True
                return
            if holder is not None:
                if self.held:
                    raise RoutingDirectoryError(
                        f"{self.path} was taken over by run {holder['run']} (process {holder['pid']} on "
                        f"{holder['host']}) while run {self.run_id} was writing; this run's records will not be "
                        "published. Run it again, with a routing_out of its own."
                    )
                if not (self._gone(holder) or self._this_process(holder)):
                    raise self._busy(holder)
                logger.warning(
                    "routing: %s names run %s (process %s on %s since %s), which %s; taking it over",
                    self.path,
                    holder["run"],
                    holder["pid"],
                    holder["host"],
                    holder.get("started"),
                    "did not finish in this process" if self._this_process(holder) else "is no longer running",
                )
                self.path.unlink(missing_ok=True)
            if self._create():
                self.held = True
                return
        raise RoutingDirectoryError(f"{self.path}: several runs are taking this lock at once; run one at a time")

    @staticmethod
    def _this_process(holder: dict) -> bool:
        return holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()

    @staticmethod
    def _gone(holder: dict) -> bool:
        """A process of this host that no longer runs (one of another host is never judged gone)."""
        return holder["host"] == socket.gethostname() and not _process_alive(int(holder["pid"]))

    def _create(self) -> bool:
        """Create the lock with its content in one step (False: another run created it first)."""
        temporary = self.path.with_name(f".{LOCK}.{self.run_id}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.owner), encoding="utf-8")
        try:
            os.link(temporary, self.path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: create it exclusively, then write it
            return self._create_exclusively()
        finally:
            temporary.unlink(missing_ok=True)
        return True

    def _create_exclusively(self) -> bool:
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(json.dumps(self.owner))
        return True

    def release(self) -> None:
        """Remove the lock if it is still this run's."""
        self.held = False
        try:
            holder = self.holder()
        except (RoutingDirectoryError, OSError):  # at exit or in a finalizer: nothing to report to
            return
        if holder is not None and holder["run"] == self.run_id and self._this_process(holder):
            self.path.unlink(missing_ok=True)

    def _busy(self, holder: dict) -> RoutingDirectoryError:
        stale = "" if holder["host"] == socket.gethostname() else f"; if it is no longer running, remove {self.path}"
        return RoutingDirectoryError(
            f"{self.path.parent} is being written by another run: {holder['run']}, process {holder['pid']} on "
            f"{holder['host']} since {holder.get('started', 'an unknown time')} (its {LOCK}{stale}). Wait for it to "
            "finish, or choose another routing_out. Several processes that each run as rank 0 (accelerate launch "
            "of a model that does not share its run between processes) need a routing_out each."
        )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _ours(name: str) -> bool:
    return bool(PENDING.fullmatch(name) or RUN_SHARD.fullmatch(name) or LEGACY_SHARD.fullmatch(name))


class RecordWriter:
    """Streams one process's spans and records to shards in `out_dir`; `commit()` (main process) publishes the run."""

    def __init__(
        self,
        out_dir: str | Path,
        layers: list[dict],
        header: dict[str, Any],
        rank: int = 0,
        world_size: int = 1,
        overwrite: bool = False,
        run_id: str | None = None,
    ) -> None:
        """`run_id`: shared by the processes of one run (the main process's, broadcast); new when None."""
        self.out_dir, self.layers, self.header = Path(out_dir), layers, header
        self.rank, self.world_size = rank, world_size
        self.run_id = run_id or new_run_id()
        self.sides = {layer["key"]: layer["side"] for layer in layers}
        self.num_experts = {layer["key"]: layer["num_experts"] for layer in layers}
        self._make_directory()
        self.lock = RoutingLock(self.out_dir, self.run_id)
        self._finalizer = weakref.finalize(self, self.lock.release)  # also at exit: a failed run's process
        try:
            self._take_lock()
            self._check_directory(overwrite)
            self._shard_index = 0
            self.shards: list[str] = []  # this process's shards
            self.counts: dict[str, dict[str, _Counts]] = {}
            self.merged: dict[str, dict[str, _Counts]] | None = None  # every process's counts, after commit
            self._reset_buffer()
            self._unpublished = True  # records not in routing.json yet (commit() publishes them)
            self._write_pending()  # also proves the directory is writable, before any work
        except BaseException:
            self.abandon()
            raise

    def _take_lock(self) -> None:
        if not self._finalizer.alive:
            raise RoutingDirectoryError(
                f"run {self.run_id} was abandoned (it failed); its records in {self.out_dir} are not written further"
            )
        with self._writing(locked=False):
            if self.rank == 0:
                self.lock.acquire()
            else:
                self.lock.check()

    def abandon(self) -> None:
        """A run that will not be published (it failed): release the directory; its files are removed by the next
        run that publishes there."""
        self._finalizer()

    # -- ownership ------------------------------------------------------------------------------------------

    def _make_directory(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RoutingDirectoryError(
                f"routing_out={self.out_dir} is a file, not a directory; choose a directory for the routing records."
            ) from None
        except OSError as error:
            raise RoutingDirectoryError(
                f"routing_out={self.out_dir} cannot be created ({error.strerror}); choose a directory you can write to."
            ) from None

    def _check_directory(self, overwrite: bool) -> None:
        """Check that the records `out_dir` holds may be replaced."""
        if not (self.out_dir / MANIFEST).exists():
            return
        try:
            earlier = load_manifest(self.out_dir)
        except RoutingDirectoryError as error:
            if not overwrite:
                raise RoutingDirectoryError(f"{error} Or pass routing_overwrite=true to replace it.") from None
            logger.warning("%s; routing_overwrite=true: it is replaced when this run completes.", error)
            return
        if not overwrite:
            raise RoutingDirectoryError(
                f"{self.out_dir} holds the routing records of an earlier run ({len(earlier['shards'])} shards, "
                f"{earlier.get('completed', 'date unknown')}). Choose another routing_out, or pass "
                "routing_overwrite=true to replace them once this run completes (they stay until then)."
            )
        logger.warning(
            "routing_overwrite=true: the routing records in %s (%s) are replaced when this run completes",
            self.out_dir,
            earlier.get("completed", "an earlier run"),
        )

    def _remove_leftovers(self, keep: set[str]) -> None:
        """Files of unfinished (or replaced) runs: our file names only, never those of this run or in `keep`."""
        removed = []
        for path in self.out_dir.iterdir():
            match = PENDING.fullmatch(path.name) or RUN_SHARD.fullmatch(path.name)
            if (
                path.is_file()
                and _ours(path.name)
                and path.name not in keep
                and not (match and match["run"] == self.run_id)
            ):
                path.unlink()
                removed.append(path.name)
        if removed:
            logger.info("routing: removed %d file(s) of earlier runs from %s", len(removed), self.out_dir)

    # -- writing ----------------------------------------------------------------------------------------------

    def _reset_buffer(self) -> None:
        self._spans: dict[str, list[tuple[np.ndarray, np.ndarray, dict[str, LayerArrays]]]] = {}
        self._positions = {side: 0 for side in set(self.sides.values())}
        self._records: list[dict] = []
        self._bytes = 0

    @property
    def _shard_name(self) -> str:
        return f"routing-{self.run_id}-r{self.rank:02d}-{self._shard_index:05d}.npz"

    def add_span(
        self, task: str | None, side: str, tokens: np.ndarray, targets: np.ndarray, layers: dict[str, LayerArrays]
    ) -> list:
        """Store the routing of `len(tokens)` positions of one side; returns the span reference."""
        start = self._positions[side]
        self._spans.setdefault(side, []).append((tokens, targets, layers))
        self._positions[side] += len(tokens)
        self._unpublished = True
        self._bytes += sum(
            a.ids.nbytes + a.weights.nbytes + (0 if a.logits is None else a.logits.nbytes) for a in layers.values()
        )
        for key, arrays in layers.items():
            counts = self.counts.setdefault(str(task), {}).setdefault(
                key, _Counts(load=np.zeros(self.num_experts[key], dtype=np.int64))
            )
            if arrays.dropped is not None:
                counts.dropped += int(arrays.dropped.sum())
                counts.can_drop = True
            counts.load += expert_counts(arrays.ids, arrays.dropped, len(counts.load))
            counts.tokens += len(arrays.ids)
        return [self._shard_name, side, start, len(tokens)]

    def add_record(
        self,
        request_type: str,
        task: str | None,
        doc_id: int | None,
        request_index: int,
        repeat: int,
        context: list[list],
        continuation: list[list],
        doc_key: str | None = None,
    ) -> None:
        self._records.append(
            {
                "request_type": request_type,
                "task": task,
                "doc_id": doc_id,
                "doc_key": doc_key,
                "request_index": request_index,
                "repeat": repeat,
                "context": context,
                "continuation": continuation,
            }
        )
        if self._bytes >= SHARD_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._records and not self._spans:
            return
        arrays: dict[str, np.ndarray] = {"records": np.array(json.dumps(self._records))}
        for side, spans in self._spans.items():
            arrays[f"{side}.tokens"] = np.concatenate([tokens for tokens, _, _ in spans]).astype(np.int32)
            arrays[f"{side}.targets"] = np.concatenate([targets for _, targets, _ in spans]).astype(np.int32)
            for key in [key for key, key_side in self.sides.items() if key_side == side]:
                parts = [layers[key] for _, _, layers in spans]
                arrays[f"{key}.ids"] = _stack_padded([p.ids for p in parts], fill=-1, dtype=np.int16)
                arrays[f"{key}.weights"] = _stack_padded([p.weights for p in parts], fill=0, dtype=np.float16)
                if any(p.dropped is not None for p in parts):
                    arrays[f"{key}.dropped"] = np.concatenate([p.dropped for p in parts])
                if any(p.logits is not None for p in parts):
                    arrays[f"{key}.logits"] = np.concatenate([p.logits for p in parts]).astype(np.float32)
        with self._writing(), (self.out_dir / self._shard_name).open("wb") as file:
            np.savez(file, **arrays)
        self.shards.append(self._shard_name)
        self._shard_index += 1
        self._reset_buffer()

    def finish_call(self) -> None:
        """End of one lm-eval request call: write what is buffered and this process's pending manifest."""
        self._flush()
        self._write_pending()

    def _write_pending(self) -> None:
        pending = {
            "run": self.run_id,
            "rank": self.rank,
            "shards": self.shards,
            "counts": {task: {key: c.to_json() for key, c in layers.items()} for task, layers in self.counts.items()},
        }
        with self._writing():
            _write_atomically(
                self.out_dir / f"routing-{self.run_id}-r{self.rank:02d}.pending.json", json.dumps(pending)
            )

    def _writing(self, locked: bool = True):
        """Write errors named; with `locked`, the run's hold on the directory checked (taken again after a commit)."""
        errors = _WriteErrors(self.out_dir)
        if locked:
            with errors:
                self._take_lock()
        return errors

    # -- publishing ---------------------------------------------------------------------------------------------

    def commit(self) -> None:
        """Main process, after every process finished its requests: publish this run as `routing.json` and delete
        the earlier run's files, then release the directory. May be called again after more requests of the main
        process (a call with nothing new does nothing)."""
        if self.rank != 0 or not (self._unpublished or self._records or self._spans):
            return  # another process's, or nothing new since the last commit (lm-eval's info, then close())
        self.finish_call()
        pendings = [self._read_pending(rank) for rank in range(self.world_size)]
        shards = [name for pending in pendings for name in pending["shards"]]
        self.merged = _merge_counts([pending["counts"] for pending in pendings])
        summary = self.summary()
        dropping = {
            key for layers in summary.values() for key, s in layers.items() if s["capacity_drop_rate"] is not None
        }
        layers = [{**layer, "capacity_dropping": layer["key"] in dropping} for layer in self.layers]
        manifest = {
            **self.header,
            "version": VERSION,
            "run": self.run_id,
            "processes": self.world_size,
            "completed": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "layers": layers,
            "shards": sorted(shards),
            "summary": summary,
        }
        with self._writing():
            _write_atomically(self.out_dir / MANIFEST, json.dumps(manifest, indent=1))
            self._remove_leftovers(keep=set(shards))
        self._unpublished = False
        self.lock.release()  # taken again if this run writes more

    def _read_pending(self, rank: int) -> dict:
        path = self.out_dir / f"routing-{self.run_id}-r{rank:02d}.pending.json"
        if not path.is_file():
            raise RoutingDirectoryError(
                f"Process {rank} of this run wrote no routing records into {self.out_dir} ({path.name} is missing). "
                "Under several processes routing_out must be a directory every process sees (on several machines, a "
                "shared filesystem)."
            )
        try:
            pending = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise RoutingDirectoryError(
                f"{path}: unreadable ({error.msg}); the run's records are incomplete. Run the evaluation again."
            ) from None
        for name in pending["shards"]:
            if not RUN_SHARD.fullmatch(name) or not (self.out_dir / name).is_file():
                raise RoutingDirectoryError(
                    f"{path} lists shard {name!r}, which is not in {self.out_dir}; the run's "
                    "records are incomplete. Run the evaluation again."
                )
        return pending

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per task and layer: expert load distribution, load entropy (normalised to [0, 1]), coefficient of
        variation of the load, and capacity-drop rate (None for routers without capacity). Every process's
        counts once committed, this process's before."""
        counts = self.merged if self.merged is not None else self.counts
        return {
            task: {key: stored_layer_summary(c.load, c.tokens, c.dropped, c.can_drop) for key, c in layers.items()}
            for task, layers in counts.items()
        }


class _WriteErrors:
    """Turns an OSError while writing into one that names the directory and what happened to earlier records."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, OSError) and not isinstance(error, RoutingDirectoryError):
            raise RoutingDirectoryError(
                f"Could not write routing records to {self.directory} ({error.strerror or error}); the records of "
                "earlier runs there are untouched. Free space (or fix permissions), or choose another routing_out."
            ) from None
        return False


def _stack_padded(parts: list[np.ndarray], fill, dtype) -> np.ndarray:
    width = max(part.shape[1] for part in parts)
    padded = [
        np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=fill) if p.shape[1] < width else p for p in parts
    ]
    return np.concatenate(padded).astype(dtype)


def _merge_counts(per_process: list[dict]) -> dict[str, dict[str, _Counts]]:
    merged: dict[str, dict[str, _Counts]] = {}
    for counts in per_process:
        for task, layers in counts.items():
            for key, c in layers.items():
                into = merged.setdefault(task, {}).setdefault(
                    key, _Counts(load=np.zeros(len(c["load"]), dtype=np.int64))
                )
                into.load += np.asarray(c["load"], dtype=np.int64)
                into.tokens += c["tokens"]
                into.dropped += c["dropped"]
                into.can_drop |= c["can_drop"]
    return merged
