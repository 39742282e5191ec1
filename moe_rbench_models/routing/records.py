"""Routing records on disk: written in shards while lm-eval runs (writer.py), read back with `load_records(DIR)`.

Layout of a routing directory:

    routing.json                 manifest of the last completed run: layers, interventions, shards, routing summary
    routing-<run>-r00-00000.npz  shards (run, process rank, sequence number), each holding
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
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from moe_rbench_models.errors import MoERBenchError

MANIFEST = "routing.json"
# 2: a record's `doc_key` is set only from a document `id` that its family aligns across tasks (BOSS ids were
# row numbers in version 1); shards are named by run
VERSION = 2
SHARD_NAME = re.compile(r"routing-(?:\d{8}T\d{6}-[0-9a-f]{8}-)?r\d{2}-\d{5}\.npz")


class RoutingDirectoryError(MoERBenchError, ValueError):
    """A routing directory cannot be written or read as asked; the message names it and the fix."""


class MissingRecordsError(RoutingDirectoryError, FileNotFoundError):
    """A directory without routing records (no such directory, or no manifest in it)."""


@dataclass
class LayerArrays:
    ids: np.ndarray  # [n, k]
    weights: np.ndarray  # [n, k]
    dropped: np.ndarray | None = None  # [n]
    logits: np.ndarray | None = None  # [n, E]


def expert_counts(ids: np.ndarray, dropped: np.ndarray | None, num_experts: int) -> np.ndarray:
    """How many times each expert was chosen: top-k ids `[n, k]` (-1 pads), leaving out positions dropped for
    capacity (processed by no expert)."""
    if dropped is not None:
        ids = ids[~dropped]
    return np.bincount(ids[ids >= 0].astype(np.int64), minlength=num_experts)


def stored_layer_summary(load: np.ndarray, tokens: int, dropped: int, can_drop: bool) -> dict[str, Any]:
    """A layer's routing summary from its expert counts: load shares, normalised load entropy, coefficient of
    variation of the load, capacity-drop rate (None where the router cannot drop) and tokens."""
    total = load.sum()
    share = load / total if total else load.astype(float)
    nonzero = share[share > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(len(share))) if total and len(share) > 1 else 0.0
    mean = load.mean()
    return {
        "load": [round(float(x), 6) for x in share],
        "load_entropy": round(entropy, 6),
        "load_cv": round(float(load.std() / mean), 6) if mean else None,
        "capacity_drop_rate": round(dropped / tokens, 6) if can_drop and tokens else None,
        "tokens": tokens,
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
    """The manifest of a routing directory, checked: readable JSON naming only shards inside the directory."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise MissingRecordsError(
            f"No routing records in {directory}: {_why_missing(Path(directory))}. Write them with "
            "`--model moe_hf --model_args ...,routing_out=DIR`."
        )
    fix = f"Remove {path} (and the routing-*.npz files beside it) or choose another routing_out."
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise RoutingDirectoryError(f"{path} is empty: the run that wrote it did not finish (a full disk?). {fix}")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise RoutingDirectoryError(
            f"{path}, line {error.lineno}: not a routing manifest ({error.msg}). {fix}"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list) or "layers" not in manifest:
        raise RoutingDirectoryError(f"{path} is not a routing manifest (no 'layers' and 'shards'). {fix}")
    for name in manifest["shards"]:
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise RoutingDirectoryError(
                f"{path} lists {name!r}, which is not a shard of this directory (shards are "
                f"routing-*.npz files beside the manifest). {fix}"
            )
    return manifest


def _why_missing(directory: Path) -> str:
    if not directory.exists():
        return "there is no such directory"
    if not directory.is_dir():
        return "it is a file, not a directory"
    unfinished = len(list(directory.glob("routing-*.pending.json")))
    return f"{MANIFEST} is missing" + (
        f" (a run that did not finish left {unfinished} pending file(s) there)" if unfinished else ""
    )


def recorded_tasks(directory: str | Path) -> set[str]:
    """The tasks whose requests a routing directory holds (from its manifest: no shard is read)."""
    return {task for task in load_manifest(directory)["summary"] if task != "None"}


def load_records(directory: str | Path) -> Iterator[RoutingRecord]:
    """One record per request captured in `directory`, in shard order."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    layer_meta = {layer["key"]: layer for layer in manifest["layers"]}
    shard = lru_cache(maxsize=8)(lambda name: _read_shard(directory, name))
    for name in manifest["shards"]:
        for entry in _shard_entries(directory / name, shard(name)):
            try:
                record = _record(entry, shard, layer_meta, manifest.get("logits", False))
            except RoutingDirectoryError:  # another shard the entry points to, missing or damaged: named there
                raise
            except (KeyError, IndexError, TypeError, ValueError) as error:  # a field or array the entry needs
                problem = f"a record it holds is incomplete ({type(error).__name__}: {error})"
                raise _damaged(directory / name, problem) from None
            yield record


def _damaged(path: Path, problem: str) -> RoutingDirectoryError:
    return RoutingDirectoryError(
        f"{path}: {problem}; the routing records in {path.parent} are damaged (a truncated or edited copy?). Record "
        "the routing again (the evaluation with routing_out=DIR)."
    )


def _shard_entries(path: Path, arrays: dict[str, np.ndarray]) -> list[dict]:
    """The shard's request entries (its `records` array, JSON)."""
    if "records" not in arrays:
        raise _damaged(path, "no 'records' array (not a shard that moe_hf wrote, or a damaged one)")
    try:
        entries = json.loads(str(arrays["records"]))
    except json.JSONDecodeError as error:
        raise _damaged(path, f"its 'records' array is not JSON ({error.msg})") from None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise _damaged(path, "its 'records' array is not a list of request entries")
    return entries


def _record(entry: dict, shard, layer_meta: dict[str, dict], logits: bool) -> RoutingRecord:
    context = _gather(shard, entry["context"], layer_meta, logits)
    continuation = _gather(shard, entry["continuation"], layer_meta, logits)
    layers = {
        key: LayerRouting(
            context_ids=context[2][key]["ids"],
            context_weights=context[2][key]["weights"],
            continuation_ids=continuation[2][key]["ids"],
            continuation_weights=continuation[2][key]["weights"],
            context_dropped=context[2][key].get("dropped"),
            continuation_dropped=continuation[2][key].get("dropped"),
            context_logits=context[2][key].get("logits"),
            continuation_logits=continuation[2][key].get("logits"),
        )
        for key in context[2]
    }
    return RoutingRecord(
        request_type=entry["request_type"],
        task=entry["task"],
        doc_id=entry["doc_id"],
        request_index=entry["request_index"],
        repeat=entry["repeat"],
        context_tokens=context[0],
        continuation_tokens=continuation[1],
        continuation_inputs=continuation[0],
        layers=layers,
        doc_key=entry.get("doc_key"),
        context_spans=tuple(map(tuple, entry["context"])),
        continuation_spans=tuple(map(tuple, entry["continuation"])),
    )


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
        empty = {
            "ids": np.zeros((0, k), dtype=np.int16),
            "weights": np.zeros((0, k), dtype=np.float16),
            "dropped": np.zeros(0, dtype=bool) if layer.get("capacity_dropping") else None,
            "logits": np.zeros((0, experts), dtype=np.float32) if logits else None,
        }
        per_layer[key] = {
            name: np.concatenate(parts[key][name]) if name in parts[key] else value for name, value in empty.items()
        }

    def joined(parts):
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    return joined(tokens), joined(targets), per_layer


def _read_shard(directory: Path, name: str) -> dict[str, np.ndarray]:
    path = directory / name
    if not path.is_file():
        raise RoutingDirectoryError(
            f"{directory / MANIFEST} lists {name}, which is missing: the records in {directory} "
            "are incomplete. Record them again."
        )
    try:
        with np.load(path) as arrays:
            return dict(arrays)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:  # truncated, not a zip, pickled
        raise _damaged(path, f"unreadable ({type(error).__name__}: {error})") from None
