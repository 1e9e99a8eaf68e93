"""A node under hostile model names: names that cannot exist get the error score, a task never
makes the node download a repository its operator did not name, downloads are safetensors
only and bounded in size.

The download tests run the registry in a child interpreter (the test process has the Hub
switched off) against tests.node.hub.FakeHub, a local stand-in for the Hub that records
every request.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from crynux_common.schemas import ArgsError, TaskType, parse_image_args
from crynux_common.scores import ERROR_SCORE
from node_client.config import ModelsConfig
from node_client.inference import ModelUnavailable
from node_client.models import ModelRegistry, ModelSource, RegistrySettings, UnknownModel

from .hub import FakeHub
from .tasks import encode, image_args, text_args

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Names no model can have: each must get the error score, on every node alike.
HOSTILE_NAMES = [
    "x/../../../../etc/passwd",
    "../secrets",
    "/etc/passwd",
    "org\\name",
    "org//name",
    "org/",
    "/",
    "a/b/c",
    "has space",
    "name\n",
    "-dash-first",
    "org/name.git",
    "org--x/name",
    "m\u00e9t\u00e9o",
    "x" * 97,
    "C:/models",
]


# --- names that cannot exist: error score -------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostileLoraName_engineCommitsErrorScore(engine, name):
    args = image_args(lora={"model": f"lora:{name}"})
    result = engine.run(TaskType.IMAGE, encode(args))
    assert result.score == ERROR_SCORE and result.files == []
    assert "lora.model" in (result.error or "") and "model name" in (result.error or "")


@pytest.mark.parametrize("name", ["x/../../../../etc/passwd", "/etc/passwd", "a\\b", "x" * 200])
def test_hostileBaseModelName_imageAndText_errorScore(engine, name):
    image = engine.run(TaskType.IMAGE, encode(image_args(base_model=f"base:{name}")))
    text = engine.run(TaskType.TEXT, encode(text_args(model=f"base:{name}")))
    for result in (image, text):
        assert result.score == ERROR_SCORE and "model name" in (result.error or "")


def test_wellFormedNames_stillParse():
    for name in ("runwayml/stable-diffusion-v1-5", "Qwen/Qwen2.5-7B-Instruct", "tiny-sd", "a_b/c.d-e_"):
        doc = image_args(base_model=name, lora={"model": name})
        assert parse_image_args(encode(doc)).model_ids() == [f"base:{name}", f"lora:{name}"]


@pytest.mark.parametrize(
    "mid", ["lora:x/../../../../etc/passwd", "base:/etc/passwd", "base:..", "base:org//x", "lora:a\\b"]
)
def test_hostileId_registryRefuses_unknownModelIsArgsError(tmp_path, mid):
    """Called directly (not through the argument schema), the registry refuses too, and touches
    neither the caches nor the network."""
    reg = ModelRegistry(RegistrySettings(hf_cache_dir=tmp_path / "hf", tiny_cache_dir=tmp_path / "tiny",
                                         allowed_repos=["*/*"], implicit_hf=True))
    with pytest.raises(UnknownModel) as exc:
        reg.resolve(mid)
    assert isinstance(exc.value, ArgsError)
    assert not reg.is_held(mid)
    assert list(tmp_path.iterdir()) == []


def test_hostileConfiguredIdOrRepo_refusedByTheConfig(tmp_path):
    with pytest.raises(ValidationError, match="file path"):
        ModelSource(id="base:../../etc", path=tmp_path)
    with pytest.raises(ValidationError, match="file path"):
        ModelSource(id="base:ok", repo="../../etc/passwd")
    with pytest.raises(ValidationError, match="allowed_repos"):
        RegistrySettings(allowed_repos=["*"])


# --- well-formed but not held: no error score, nothing fetched ---------------------------------


@pytest.mark.parametrize("mid", ["base:evil-org/huge-model", "base:unknown-name"])
def test_wellFormedUnheldModel_isANodeFailure_notAnErrorScore(engine, mid):
    """An auditor might hold the model: an error score could be slashed, so the engine raises
    ModelUnavailable (an InferenceFailure: the node commits nothing)."""
    with pytest.raises(ModelUnavailable, match="not held by this node"):
        engine.run(TaskType.IMAGE, encode(image_args(base_model=mid)), task_model_ids=[mid])


def test_defaults_neverDownloadUnconfiguredRepos_configMirrorsRegistry():
    reg = RegistrySettings()
    assert reg.implicit_hf is False and reg.allowed_repos == [] and reg.max_download_bytes == 32 * 2**30
    # The configuration file's mirror (no torch import) has the same fields and defaults.
    assert ModelsConfig().model_dump() == {k: v for k, v in reg.model_dump().items() if k != "models"} | {
        "models": []
    }
    assert set(ModelsConfig.model_fields) == set(RegistrySettings.model_fields)


# --- downloads against a local Hub ---------------------------------------------------------------

_CHILD = r"""
import json, sys
from node_client.models import ModelRegistry, RegistrySettings
out = []
for case in json.loads(sys.stdin.read()):
    reg = ModelRegistry(RegistrySettings.model_validate(case["settings"]))
    try:
        folder = reg.resolve(case["id"])
        out.append({"files": sorted(p.name for p in folder.iterdir()), "held": reg.is_held(case["id"])})
    except Exception as e:
        out.append({"error": type(e).__name__, "message": str(e)})
print(json.dumps(out))
"""

REPOS = {
    "good/model": {
        "config.json": b'{"_class_name": "x"}',
        "model.safetensors": b"S" * 100,
        "pytorch_model.bin": b"PICKLE",  # never fetched, whatever size it claims
        "optimizer.pt": b"PICKLE",
        "weights.ckpt": b"PICKLE",
        "modeling_evil.py": b"import os",
    },
    "good/big": {"config.json": b"{}", "a.safetensors": b"A" * 100, "b.safetensors": b"B" * 100},
    "evil-org/huge-model": {"config.json": b"{}", "model.safetensors": b"E" * 10},
}


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    h = FakeHub(REPOS, declared_sizes={"good/model/pytorch_model.bin": 10**12}).start()
    yield h
    h.stop()


@pytest.fixture
def resolve_in_child(hub, tmp_path) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Resolve [{"settings": ..., "id": ...}] in a fresh interpreter that may reach `hub` only."""

    def run(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, case in enumerate(cases):
            case["settings"] = {"hf_cache_dir": str(tmp_path / f"hf{i}"), "tiny_models": False, **case["settings"]}
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url,
               "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(cases), capture_output=True,
                              text=True, env=env, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


def test_unlistedRepo_defaultConfig_notOneRequestToTheHub(hub, resolve_in_child):
    out = resolve_in_child([
        {"settings": {}, "id": "base:evil-org/huge-model"},  # the defaults: allow_download on
        {"settings": {"implicit_hf": True}, "id": "base:evil-org/huge-model"},  # cache only
        {"settings": {"allowed_repos": ["good/*"]}, "id": "lora:evil-org/huge-model"},
    ])
    for r in out:
        assert r["error"] == "ModelUnavailable" and "allowed_repos" in r["message"], r
    assert hub.requests == []


def test_allowListedRepo_downloadsConfigsAndSafetensorsOnly(hub, resolve_in_child):
    [r] = resolve_in_child([{"settings": {"allowed_repos": ["good/*"]}, "id": "base:good/model"}])
    assert r == {"files": ["config.json", "model.safetensors"], "held": False}  # allow-listed, not declared
    assert sorted(hub.fetched_files()) == ["good/model/config.json", "good/model/model.safetensors"]
    # The 1 TB pickle the Hub lists did not count against max_download_bytes: never fetched.
    assert not [p for _, p in hub.requests if p.endswith((".bin", ".pt", ".ckpt", ".py"))]


def test_configuredRepo_downloadsWithoutAllowList_andIsHeldAfterwards(hub, resolve_in_child):
    [r] = resolve_in_child([{"settings": {"models": [{"id": "base:good/model"}]}, "id": "base:good/model"}])
    assert r == {"files": ["config.json", "model.safetensors"], "held": True}


def test_repoOverMaxDownloadBytes_refusedBeforeAnyFileIsFetched(hub, resolve_in_child):
    [r] = resolve_in_child([
        {"settings": {"allowed_repos": ["good/big"], "max_download_bytes": 150}, "id": "base:good/big"},
    ])
    assert r["error"] == "ModelUnavailable" and "over max_download_bytes" in r["message"]
    assert [p for _, p in hub.requests if "/resolve/" in p] == []  # only the file list was read


def test_repoMissingOnTheHub_modelUnavailable_notAnErrorScore(hub, resolve_in_child):
    """The repo may be private, or held by other nodes as a configured folder under this ID."""
    [r] = resolve_in_child([{"settings": {"allowed_repos": ["good/*"]}, "id": "base:good/absent"}])
    assert r["error"] == "ModelUnavailable", r
