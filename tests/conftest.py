"""Shared fixtures: tiny checkpoints built once per session, data directories, a moderation server.

Nothing here touches the network: the hub is switched off for this process and its subprocesses. The helpers the
tests import (paths, command runners, lm-eval runs) are in helpers.py.
"""

from __future__ import annotations

import os
import threading
from http.server import HTTPServer
from pathlib import Path

import pytest
from helpers import ModerationServer

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
os.environ.pop("MOE_RBENCH_STARTUP_HOOK", None)
REAL_DATA = os.environ.get("MOE_RBENCH_DATA_DIR")  # read before the tests clear it


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """`tiny_model("mixtral")` -> path of a tiny checkpoint, built at most once per session."""
    from moe_rbench_models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    built: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in built:
            built[architecture] = build_tiny_model(architecture, root / architecture)
        return built[architecture]

    return get


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The original release files (`../shared/data` in CI), from MOE_RBENCH_DATA_DIR."""
    if not REAL_DATA:
        pytest.skip("MOE_RBENCH_DATA_DIR is not set: real-data tests need the benchmarks' release files")
    return Path(REAL_DATA)


@pytest.fixture(autouse=True)
def _no_data_dir_from_environment(monkeypatch):
    """Tests choose their data directory explicitly."""
    monkeypatch.delenv("MOE_RBENCH_DATA_DIR", raising=False)


@pytest.fixture
def moderation_server():
    ModerationServer.calls = []
    server = HTTPServer(("127.0.0.1", 0), ModerationServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
