"""Routing records on disk: written in shards while lm-eval runs, read back with `load_records(DIR)`.

Layout of a routing directory:

    routing.json                 manifest: layers, interventions, shards, per-task routing summary
    routing-r00-00000.npz ...    shards (rank, sequence number), each holding
        <side>.tokens            int32 [positions]        input token of each stored position
        <side>.targets           int32 [positions]        the token its output scores (-1 on an encoder)
        <layer>.ids              int16 [positions, k]     top-k expert ids of the positions of its side
        <layer>.weights          float16 [positions, k]
        <layer>.dropped          bool [positions]         capacity-dropped (layers that can drop only)
        <layer>.logits           float32 [positions, E]   only with routing_logits=True
        records                  JSON: one entry per request, pointing at spans of positions

A span is `[shard, side, start, length]`; the context of a multiple-choice document is one span that
all its requests point to. Positions follow lm-eval's scoring: a continuation (or generated) entry is
the position whose output scores (or produced) that token, so there is exactly one per continuation
token; context entries are the positions before it. In a causal model that makes the context entries
those of context tokens 0..n-2 (the last context token's position scores the first continuation token);
in an encoder-decoder model the context is the encoder's input and the continuation the decoder's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "routing.json"
# 2: a record's `doc_key` is set only from a document `id` that its family aligns across tasks (BOSS ids were
# row numbers in version 1)
VERSION = 2
SHARD_BYTES = 32 * 2**20


@dataclass
class LayerArrays:
    ids: np.ndarray  # [n, k]
    weights: np.ndarray  # [n, k]
    dropped: np.ndarray | None = None  # [n]
    logits: np.ndarray | None = None  # [n, E]


@dataclass
class _Counts:
    load: np.ndarray  # [E] assignments per expert
    tokens: int = 0
    dropped: int = 0
    can_drop: bool = False


class RecordWriter:
    """Streams spans and records to shards; on several processes, rank 0 gathers every rank's shards."""

    def __init__(self, out_dir: str | Path, layers: list[dict], header: dict[str, Any], rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        self.out_dir, self.layers, self.header = Path(out_dir), layers, header
        self.rank, self.world_size = rank, world_size
        self.sides = {layer["key"]: layer["side"] for layer in layers}
        self.num_experts = {layer["key"]: layer["num_experts"] for layer in layers}
        if rank == 0:
            self._local_dir = self.out_dir
            _clear_previous_run(self.out_dir)
        else:  # shards wait here until rank 0 gathers them
            self._local_dir = Path(tempfile.mkdtemp(prefix=f"moe_rbench_routing_r{rank}_"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._local_dir, True)
        self._shard_index = 0
        self._written: list[str] = []  # this process's shards not yet gathered
        self.shards: list[str] = []  # every shard in out_dir (rank 0)
        self.counts: dict[str, dict[str, _Counts]] = {}
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._spans: dict[str, list[tuple[np.ndarray, np.ndarray, dict[str, LayerArrays]]]] = {}
        self._positions = {side: 0 for side in set(self.sides.values())}
        self._records: list[dict] = []
        self._bytes = 0

    @property
    def _shard_name(self) -> str:
        return f"routing-r{self.rank:02d}-{self._shard_index:05d}.npz"

    def add_span(self, task: str | None, side: str, tokens: np.ndarray, targets: np.ndarray,
                 layers: dict[str, LayerArrays]) -> list:  # fmt: skip
        """Store the routing of `len(tokens)` positions of one side; returns the span reference."""
        start = self._positions[side]
        self._spans.setdefault(side, []).append((tokens, targets, layers))
        self._positions[side] += len(tokens)
        self._bytes += sum(a.ids.nbytes + a.weights.nbytes + (0 if a.logits is None else a.logits.nbytes)
                           for a in layers.values())  # fmt: skip
        for key, arrays in layers.items():
            counts = self.counts.setdefault(str(task), {}).setdefault(
                key, _Counts(load=np.zeros(self.num_experts[key], dtype=np.int64))
            )
            used = arrays.ids[arrays.ids >= 0]
            if arrays.dropped is not None:
                used = arrays.ids[~arrays.dropped][arrays.ids[~arrays.dropped] >= 0]
                counts.dropped += int(arrays.dropped.sum())
                counts.can_drop = True
            counts.load += np.bincount(used.astype(np.int64), minlength=len(counts.load))
            counts.tokens += len(arrays.ids)
        return [self._shard_name, side, start, len(tokens)]

    def add_record(self, request_type: str, task: str | None, doc_id: int | None, request_index: int, repeat: int,
                   context: list[list], continuation: list[list], doc_key: str | None = None) -> None:  # fmt: skip
        self._records.append({"request_type": request_type, "task": task, "doc_id": doc_id, "doc_key": doc_key,
                              "request_index": request_index, "repeat": repeat,
                              "context": context, "continuation": continuation})  # fmt: skip
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
        np.savez(self._local_dir / self._shard_name, **arrays)
        self._written.append(self._shard_name)
        self._shard_index += 1
        self._reset_buffer()

    def finish_call(self) -> None:
        """End of one lm-eval request batch (e.g. all loglikelihood requests): write, gather, update the manifest."""
        self._flush()
        if self.world_size > 1:
            self._gather_to_main()
        else:
            self.shards += self._written
        self._written = []
        if self.rank == 0:
            self._write_manifest()

    def _gather_to_main(self) -> None:
        import torch.distributed as dist

        counts = [None] * self.world_size
        dist.all_gather_object(counts, len(self._written))
        for index in range(max(counts)):
            payload = None
            if index < len(self._written):
                path = self._local_dir / self._written[index]
                payload = (path.name, path.read_bytes())
            received = [None] * self.world_size if self.rank == 0 else None
            dist.gather_object(payload, received, dst=0)
            if self.rank == 0:
                for item in received:
                    if item is not None:
                        name, data = item
                        if name not in self._written:
                            (self.out_dir / name).write_bytes(data)
                        self.shards.append(name)
            elif payload is not None:
                (self._local_dir / self._written[index]).unlink()
        all_counts = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(self.counts, all_counts, dst=0)
        if self.rank == 0:
            self.merged_counts = _merge_counts(all_counts)

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per task and layer: expert load distribution, load entropy (normalised to [0, 1]), coefficient of
        variation of the load, and capacity-drop rate (None for routers without capacity)."""
        counts = getattr(self, "merged_counts", self.counts)
        return {task: {key: _layer_summary(c) for key, c in layers.items()} for task, layers in counts.items()}

    def _write_manifest(self) -> None:
        summary = self.summary()
        dropping = {key for layers in summary.values() for key, s in layers.items() if s["capacity_drop_rate"] is not None}
        layers = [{**layer, "capacity_dropping": layer["key"] in dropping} for layer in self.layers]
        manifest = {**self.header, "version": VERSION, "layers": layers, "shards": sorted(set(self.shards)),
                    "summary": summary}  # fmt: skip
        (self.out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))

    def close(self) -> None:
        """Remove a non-main rank's temporary directory now (otherwise at exit)."""
        if self.rank != 0:
            self._cleanup()


def _clear_previous_run(out_dir: Path) -> None:
    """Remove what an earlier run wrote here (only the files its manifest lists)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST
    if manifest.exists():
        for name in json.loads(manifest.read_text()).get("shards", []):
            (out_dir / name).unlink(missing_ok=True)
        manifest.unlink()


def _stack_padded(parts: list[np.ndarray], fill, dtype) -> np.ndarray:
    width = max(part.shape[1] for part in parts)
    padded = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=fill) if p.shape[1] < width else p
              for p in parts]  # fmt: skip
    return np.concatenate(padded).astype(dtype)


def _merge_counts(per_rank: list[dict]) -> dict[str, dict[str, _Counts]]:
    merged: dict[str, dict[str, _Counts]] = {}
    for counts in per_rank:
        for task, layers in counts.items():
            for key, c in layers.items():
                into = merged.setdefault(task, {}).setdefault(key, _Counts(load=np.zeros_like(c.load)))
                into.load += c.load
                into.tokens += c.tokens
                into.dropped += c.dropped
                into.can_drop |= c.can_drop
    return merged


def _layer_summary(counts: _Counts) -> dict[str, Any]:
    total = counts.load.sum()
    share = counts.load / total if total else counts.load.astype(float)
    nonzero = share[share > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(len(share))) if total and len(share) > 1 else 0.0
    mean = counts.load.mean()
    return {
        "load": [round(float(x), 6) for x in share],
        "load_entropy": round(entropy, 6),
        "load_cv": round(float(counts.load.std() / mean), 6) if mean else None,
        "capacity_drop_rate": round(counts.dropped / counts.tokens, 6) if counts.can_drop and counts.tokens else None,
        "tokens": counts.tokens,
    }


# -- reading ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRouting:
    context_ids: np.ndarray  # [context tokens, k]; -1 pads layers whose k is smaller
    context_weights: np.ndarray
    continuation_ids: np.ndarray  # [continuation tokens, k]
    continuation_weights: np.ndarray
    context_dropped: np.ndarray | None = None
    continuation_dropped: np.ndarray | None = None
    context_logits: np.ndarray | None = None
    continuation_logits: np.ndarray | None = None


@dataclass(frozen=True)
class RoutingRecord:
    request_type: str  # loglikelihood, loglikelihood_rolling or generate_until
    task: str | None
    doc_id: int | None
    request_index: int  # lm-eval's request index within the document (the choice, for multiple choice)
    repeat: int
    context_tokens: np.ndarray  # input token of each context entry
    continuation_tokens: np.ndarray  # the continuation (or generated) tokens, one per continuation entry
    continuation_inputs: np.ndarray  # input token of each continuation entry
    layers: dict[str, LayerRouting]  # by layer key, e.g. "decoder.3"
    doc_key: str | None = None  # the document's `id` (DecodingTrust id, SNLI pair, ANLI uid): aligns sets
    context_spans: tuple = field(default=(), repr=False)
    continuation_spans: tuple = field(default=(), repr=False)


def load_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"No routing records in {directory}: {MANIFEST} is missing. Write them with "
                                "`--model moe_hf --model_args ...,routing_out=DIR`.")  # fmt: skip
    return json.loads(path.read_text())


def load_records(directory: str | Path) -> Iterator[RoutingRecord]:
    """One record per request captured in `directory`, in shard order."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    layer_meta = {layer["key"]: layer for layer in manifest["layers"]}
    shard = lru_cache(maxsize=8)(lambda name: dict(np.load(directory / name)))
    for name in manifest["shards"]:
        for entry in json.loads(str(shard(name)["records"])):
            context = _gather(shard, entry["context"], layer_meta, manifest["logits"])
            continuation = _gather(shard, entry["continuation"], layer_meta, manifest["logits"])
            layers = {
                key: LayerRouting(
                    context_ids=context[2][key]["ids"], context_weights=context[2][key]["weights"],
                    continuation_ids=continuation[2][key]["ids"],
                    continuation_weights=continuation[2][key]["weights"],
                    context_dropped=context[2][key].get("dropped"),
                    continuation_dropped=continuation[2][key].get("dropped"),
                    context_logits=context[2][key].get("logits"),
                    continuation_logits=continuation[2][key].get("logits"),
                )  # fmt: skip
                for key in context[2]
            }
            yield RoutingRecord(
                request_type=entry["request_type"], task=entry["task"], doc_id=entry["doc_id"],
                request_index=entry["request_index"], repeat=entry["repeat"],
                context_tokens=context[0], continuation_tokens=continuation[1], continuation_inputs=continuation[0],
                layers=layers, doc_key=entry.get("doc_key"),
                context_spans=tuple(map(tuple, entry["context"])),
                continuation_spans=tuple(map(tuple, entry["continuation"])),
            )  # fmt: skip


def _gather(shard, spans: list[list], layers: dict[str, dict], logits: bool):
    """Input tokens, target tokens and per-layer arrays of a list of spans; a layer with no position here
    (none stored, or a layer of the other side) gets empty arrays of the right shape."""
    tokens, targets, per_layer = [], [], {}
    parts: dict[str, dict[str, list]] = {key: {} for key in layers}
    for name, side, start, length in spans:
        arrays = shard(name)
        tokens.append(arrays[f"{side}.tokens"][start : start + length])
        targets.append(arrays[f"{side}.targets"][start : start + length])
        for key in (key for key, layer in layers.items() if layer["side"] == side):
            for field_name in ("ids", "weights", "dropped", "logits"):
                if f"{key}.{field_name}" in arrays:
                    parts[key].setdefault(field_name, []).append(arrays[f"{key}.{field_name}"][start : start + length])
    for key, layer in layers.items():
        k, experts = layer["top_k"] or 1, layer["num_experts"]
        empty = {"ids": np.zeros((0, k), dtype=np.int16), "weights": np.zeros((0, k), dtype=np.float16),
                 "dropped": np.zeros(0, dtype=bool) if layer.get("capacity_dropping") else None,
                 "logits": np.zeros((0, experts), dtype=np.float32) if logits else None}  # fmt: skip
        per_layer[key] = {name: np.concatenate(parts[key][name]) if name in parts[key] else value
                          for name, value in empty.items()}  # fmt: skip
    def joined(parts):
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    return joined(tokens), joined(targets), per_layer
