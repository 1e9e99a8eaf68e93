"""Tiny seeded models built once per session, a registry over them, a shared warm engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node_client import tiny_models
from node_client.inference import InferenceEngine
from node_client.models import ModelRegistry, RegistrySettings

from .tasks import SECOND_NODE_TASKS, THREADS, make_engine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]

@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Every built-in tiny model, built once for the whole session."""
    cache = tmp_path_factory.mktemp("tiny-models")
    for mid in tiny_models.TINY_MODELS:
        tiny_models.materialize(mid, cache)
    return cache


@pytest.fixture(scope="session")
def registry(tiny_cache) -> ModelRegistry:
    return ModelRegistry(RegistrySettings(tiny_cache_dir=tiny_cache, allow_download=False))


@pytest.fixture(scope="session")
def engine(registry) -> InferenceEngine:
    """One warm engine shared by the tests that do not count loads."""
    return make_engine(registry)


@pytest.fixture
def fresh_engine(registry) -> InferenceEngine:
    """A cold engine: nothing loaded yet."""
    return make_engine(registry)


# A second node: a separate Python process with its own engine, same code and thread count.
_WORKER = r"""
import json, sys
from pathlib import Path
from node_client.inference import EngineSettings, InferenceEngine, TorchSettings
from node_client.models import ModelRegistry, RegistrySettings
req = json.load(sys.stdin)
reg = ModelRegistry(RegistrySettings(tiny_cache_dir=Path(req["cache"]), allow_download=False))
eng = InferenceEngine(reg, EngineSettings(torch=TorchSettings(num_threads=req["threads"])))
out = []
for task in req["tasks"]:
    r = eng.run(task["type"], task["args"].encode())
    files = [[n, b.hex()] for n, b in r.files]
    out.append({"score": r.score.hex(), "error": r.error, "files": files})
print(json.dumps({"results": out, "loads": eng.cache.stats.loads}))
"""


@pytest.fixture(scope="session")
def other_process(tiny_cache) -> Callable[[list[tuple[int, bytes]]], dict[str, Any]]:
    """Run tasks [(task_type, args_bytes)] in a fresh interpreter; returns its results."""

    def run(tasks: list[tuple[int, bytes]]) -> dict[str, Any]:
        req = {
            "cache": str(tiny_cache),
            "threads": THREADS,
            "tasks": [{"type": int(t), "args": a.decode()} for t, a in tasks],
        }
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER],
            input=json.dumps(req),
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture(scope="session")
def second_node(other_process) -> dict[str, Any]:
    """The results of SECOND_NODE_TASKS computed by another process (started once)."""
    out = other_process([(t, a) for t, a in SECOND_NODE_TASKS.values()])
    return {
        "loads": out["loads"],
        **{name: r for name, r in zip(SECOND_NODE_TASKS, out["results"], strict=True)},
    }
