"""Model registry: IDs to folders, held models, tiny model builds."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from crynux_common.schemas import ArgsError, TaskType
from node_client import tiny_models
from node_client.inference import ModelUnavailable
from node_client.models import ModelRegistry, ModelSource, RegistrySettings, UnknownModel

from .tasks import encode, make_engine, text_args


def fake_hf_cache(root: Path, repo: str, source: Path, commit: str = "a" * 40) -> Path:
    """Lay out `source` as huggingface_hub would have downloaded `repo` into `root`."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    shutil.copytree(source, snap)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snap


def test_resolve_tinyIdsToBuiltFolders(registry):
    sd = registry.resolve("base:tiny-sd")
    assert (sd / "model_index.json").is_file() and (sd / "unet").is_dir()
    assert (registry.resolve("base:tiny-gpt2") / "config.json").is_file()
    assert list(registry.resolve("lora:tiny-sd-lora").glob("*.safetensors"))


def test_heldModelIds_listsTinyAndPresentConfiguredModels(tiny_cache, tmp_path):
    present = tmp_path / "my-model"
    present.mkdir()
    reg = ModelRegistry(
        RegistrySettings(
            models=[
                ModelSource(id="base:mine", path=present),
                ModelSource(id="base:gone", path=tmp_path / "missing"),
                ModelSource(id="base:remote", repo="org/not-downloaded"),
            ],
            tiny_cache_dir=tiny_cache,
            hf_cache_dir=tmp_path / "hf",
        )
    )
    held = reg.held_model_ids()
    assert "base:mine" in held and "base:tiny-sd" in held and "lora:tiny-sd-lora" in held
    assert "base:gone" not in held and "base:remote" not in held
    assert held == sorted(held)


def test_heldModelIds_withoutTinyModels_onlyConfigured(tmp_path):
    (tmp_path / "m").mkdir()
    reg = ModelRegistry(
        RegistrySettings(models=[ModelSource(id="base:m", path=tmp_path / "m")], tiny_models=False)
    )
    assert reg.held_model_ids() == ["base:m"]
    with pytest.raises(ModelUnavailable, match="not held"):  # well-formed: not the task's fault
        reg.resolve("base:tiny-sd")


def test_resolve_configuredFolder(tmp_path):
    (tmp_path / "sd").mkdir()
    reg = ModelRegistry(RegistrySettings(models=[ModelSource(id="base:sd", path=tmp_path / "sd")]))
    assert reg.resolve("base:sd") == tmp_path / "sd"


def test_resolve_failsIfConfiguredFolderMissing_modelUnavailable(tmp_path):
    reg = ModelRegistry(RegistrySettings(models=[ModelSource(id="base:sd", path=tmp_path / "x")]))
    with pytest.raises(ModelUnavailable, match="missing"):
        reg.resolve("base:sd")


@pytest.mark.parametrize("mid", ["nocolon", "vae:x", "base:", "lora:x/../../etc/passwd", "base:a b"])
def test_resolve_failsIfIdNamesNoModel_unknownModelIsArgsError(registry, mid):
    with pytest.raises(UnknownModel) as exc:
        registry.resolve(mid)
    assert isinstance(exc.value, ArgsError)


def test_resolve_failsIfHubRepoNotCachedAndOffline_modelUnavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reg = ModelRegistry(RegistrySettings(hf_cache_dir=tmp_path, allow_download=True, allowed_repos=["org/*"]))
    with pytest.raises(ModelUnavailable, match="downloads are off"):
        reg.resolve("base:org/absent")
    assert not reg.is_held("base:org/absent")


def test_resolve_hubRepoFromLocalCache_runsLikeRealWeights(registry, tmp_path):
    """An implicit `base:org/name` resolves through the HF cache and loads with
    from_pretrained(folder, local_files_only=True)."""
    snap = fake_hf_cache(tmp_path, "tiny-org/tiny-llama", registry.resolve("base:tiny-llama"))
    reg = ModelRegistry(RegistrySettings(hf_cache_dir=tmp_path, allow_download=False, implicit_hf=True))
    assert reg.resolve("base:tiny-org/tiny-llama") == snap
    configured = ModelRegistry(
        RegistrySettings(
            models=[ModelSource(id="base:chat", repo="tiny-org/tiny-llama")],
            hf_cache_dir=tmp_path,
            tiny_models=False,
        )
    )
    assert configured.held_model_ids() == ["base:chat"]
    engine = make_engine(reg)
    via_hub = engine.run(TaskType.TEXT, encode(text_args(model="base:tiny-org/tiny-llama")))
    assert via_hub.error is None and len(via_hub.score) == 32


def test_modelSource_failsIfNotExactlyOneSource(tmp_path):
    with pytest.raises(ValidationError, match="give 'path' or 'repo'"):
        ModelSource(id="base:x")
    with pytest.raises(ValidationError, match="not both"):
        ModelSource(id="base:x", path=tmp_path, repo="a/b")
    with pytest.raises(ValidationError, match="invalid model ID"):
        ModelSource(id="x", path=tmp_path)


def test_registry_failsIfModelConfiguredTwice(tmp_path):
    src = ModelSource(id="base:x", path=tmp_path)
    with pytest.raises(ValueError, match="twice"):
        ModelRegistry(RegistrySettings(models=[src, src]))


def test_materialize_buildsOnceThenReuses(tmp_path):
    first = tiny_models.materialize("base:tiny-gpt2", tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = tiny_models.materialize("base:tiny-gpt2", tmp_path)
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_materialize_sameWeightsOnEveryMachine(tiny_cache, tmp_path):
    """Two nodes building the tiny models independently get identical files."""
    for mid in ("base:tiny-sd", "base:tiny-llama"):
        mine = tiny_models.materialize(mid, tmp_path)
        theirs = tiny_models.tiny_folder(mid, tiny_cache)
        files = sorted(p.relative_to(mine) for p in mine.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
        for rel in files:
            if rel.suffix == ".safetensors" or rel.name.startswith("tokenizer"):
                assert (mine / rel).read_bytes() == (theirs / rel).read_bytes(), rel


def test_materialize_failsIfNotATinyModel(tmp_path):
    with pytest.raises(KeyError, match="not a built-in tiny model"):
        tiny_models.materialize("base:sd-1.5", tmp_path)
