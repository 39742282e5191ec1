"""Which checkpoint a run used: recorded with its routing (`describe_moe`'s `checkpoint`) so that tools reading the
records later (`moe-rbench steer`) can tell whether a checkpoint they are given is the recorded one.

The identity is the checkpoint's name (what `from_pretrained` was given) and two fingerprints, cheap to take at any
size: of its `config.json` (the SHA-256 of the file's JSON with sorted keys, leaving out `_name_or_path` and
`transformers_version`, which change when the same model is saved again or read from elsewhere), and of its weight
files (their names and sizes and their bytes: all of a file up to 16 MiB, 1 MiB from the start, middle and end of a
larger one; a copy has the same fingerprint, weights trained further or saved in another precision another one).
A checkpoint in the Hugging Face cache is found there (nothing is downloaded); where a file cannot be found its
fingerprint is None. The sampled bytes of a large file can miss a change confined to a few tensors elsewhere in it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

VOLATILE = ("_name_or_path", "transformers_version")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SAMPLE = 2**20  # bytes read at the start, middle and end of a weight file larger than WHOLE
WHOLE = 16 * 2**20


def checkpoint_file(name_or_path: str | Path, name: str, revision: str | None = None) -> Path | None:
    """A file of the checkpoint: in its folder, or in the Hugging Face cache for a hub id (None if absent)."""
    local = Path(name_or_path).expanduser() / name
    if local.is_file():
        return local
    from transformers.utils import cached_file

    try:
        found = cached_file(
            str(name_or_path),
            name,
            revision=revision,
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError):  # not a hub id (a path that does not exist), or nothing cached
        return None
    return Path(found) if found else None


def weights_fingerprint(name_or_path: str | Path, revision: str | None = None) -> str | None:
    """The fingerprint of the checkpoint's weight files (module docstring), or None where they cannot be found."""
    files = _weight_files(name_or_path, revision)
    if not files:
        return None
    digest = hashlib.sha256()
    try:
        for path in files:
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode())
            with path.open("rb") as file:
                if size <= WHOLE:
                    digest.update(file.read())
                    continue
                for start in (0, size // 2 - SAMPLE // 2, size - SAMPLE):
                    file.seek(start)
                    digest.update(file.read(SAMPLE))
    except OSError:
        return None
    return digest.hexdigest()[:16]


def _weight_files(name_or_path: str | Path, revision: str | None) -> list[Path]:
    for index_name in WEIGHT_INDEXES:
        index = checkpoint_file(name_or_path, index_name, revision)
        if index is None:
            continue
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return []
        found = [checkpoint_file(name_or_path, shard, revision) for shard in shards]
        return [path for path in found if path is not None] if all(found) else []
    for name in WEIGHT_FILES:
        path = checkpoint_file(name_or_path, name, revision)
        if path is not None:
            return [path]
    return []


def config_fingerprint(name_or_path: str | Path, revision: str | None = None) -> str | None:
    """The fingerprint of the checkpoint's config.json (module docstring), or None where it cannot be read."""
    path = checkpoint_file(name_or_path, "config.json", revision)
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    kept = {key: value for key, value in config.items() if key not in VOLATILE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_identity(config) -> dict[str, Any]:
    """The name and fingerprints of the checkpoint a model was loaded from (its config's `name_or_path`)."""
    name = getattr(config, "name_or_path", None) or None
    return {
        "name_or_path": name,
        "config_sha256": config_fingerprint(name) if name else None,
        "weights_sha256": weights_fingerprint(name) if name else None,
    }


def describe_checkpoint(name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """`describe_moe` of a checkpoint from its config alone (the model built on the meta device: no weight is read),
    with its MoE layer keys."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from moe_rbench_models.routing.discovery import describe_moe, find_moe_layers

    config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    auto_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto_class.from_config(config)
    layers = find_moe_layers(model)
    return {**describe_moe(model, layers), "layer_keys": [layer.key for layer in layers]}
