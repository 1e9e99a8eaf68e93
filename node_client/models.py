"""Model registry: model IDs (`base:<name>`, `lora:<name>`) -> local folders.

A model comes from one of:
- a configured local folder (`path`);
- a configured Hugging Face repo (`repo`, optional `revision`), downloaded with
  huggingface_hub into the usual HF cache (tqdm progress bar);
- a built-in tiny seeded model (`base:tiny-sd`, ... see tiny_models.TINY_MODELS), built on
  first use into a cache folder;
- implicitly, an ID whose name looks like a Hugging Face repo (`base:org/name`).

Only safetensors weights are fetched and loaded (no pickle from the network).

Public API:
    ModelSource, RegistrySettings       pydantic config models
    ModelRegistry(settings)
        .resolve(model_id) -> Path      local folder (downloads when allowed)
        .download(model_id) -> Path     fetch now (progress bar)
        .held_model_ids() -> list[str]  what to declare on-chain
        .is_held(model_id) -> bool
    UnknownModel (an ArgsError: no node can ever have it -> error score)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crynux_common.schemas import ArgsError, split_model_id
from node_client import tiny_models
from node_client.inference.errors import ModelUnavailable

log = logging.getLogger(__name__)

#: What snapshot_download fetches: configs, tokenizers, safetensors weights.
ALLOW_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model", "*.jinja", "*.tiktoken"]
IGNORE_PATTERNS = ["*non_ema*", "*.ckpt", "*.bin", "*.onnx", "*.msgpack", "*.h5"]


class UnknownModel(ArgsError):
    """The model ID names no model that exists: the task's arguments are invalid."""


class ModelSource(BaseModel):
    """One configured model: a local folder or a Hugging Face repo."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    path: Path | None = None
    repo: str | None = None
    revision: str | None = None

    @field_validator("id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        split_model_id(v)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.path is None) == (self.repo is None):
            raise ValueError(f"model {self.id}: give exactly one of 'path' or 'repo'")
        return self


class RegistrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSource] = Field(default_factory=list)
    #: Hugging Face cache folder; None uses the HF default (HF_HOME / ~/.cache/huggingface).
    hf_cache_dir: Path | None = None
    #: Fetch missing models from the Hub when a task needs them.
    allow_download: bool = True
    #: Treat unconfigured IDs like `base:org/name` as Hugging Face repos.
    implicit_hf: bool = True
    #: Offer the built-in tiny seeded models (tests, demo).
    tiny_models: bool = True
    tiny_cache_dir: Path | None = None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


class ModelRegistry:
    def __init__(self, settings: RegistrySettings | None = None):
        self.settings = settings or RegistrySettings()
        self._sources: dict[str, ModelSource] = {}
        for src in self.settings.models:
            if src.id in self._sources:
                raise ValueError(f"model {src.id} configured twice")
            self._sources[src.id] = src

    # --- lookups --------------------------------------------------------------------

    def known_ids(self) -> list[str]:
        ids = set(self._sources)
        if self.settings.tiny_models:
            ids |= set(tiny_models.TINY_MODELS)
        return sorted(ids)

    def resolve(self, model_id: str) -> Path:
        """The local folder of `model_id`, fetching or building it if needed and allowed.

        Raises UnknownModel when the ID can name no model, ModelUnavailable when the model
        exists but this node cannot get it now.
        """
        try:
            _, name = split_model_id(model_id)
        except ValueError as e:
            raise UnknownModel(str(e)) from e
        src = self._sources.get(model_id)
        if src is not None:
            if src.path is not None:
                if not src.path.is_dir():
                    raise ModelUnavailable(f"{model_id}: configured folder {src.path} is missing")
                return src.path
            assert src.repo is not None
            return self._hub(
                model_id, src.repo, src.revision, download=self.settings.allow_download
            )
        if self.settings.tiny_models and model_id in tiny_models.TINY_MODELS:
            return tiny_models.materialize(model_id, self.settings.tiny_cache_dir)
        if self.settings.implicit_hf and "/" in name:
            return self._hub(model_id, name, None, download=self.settings.allow_download)
        raise UnknownModel(
            f"unknown model {model_id}: not configured, not built in, not a Hugging Face repo name"
        )

    def download(self, model_id: str) -> Path:
        """Fetch a configured or implicit Hugging Face model now, with a progress bar."""
        src = self._sources.get(model_id)
        if src is not None and src.repo is not None:
            return self._hub(model_id, src.repo, src.revision, download=True)
        return self.resolve(model_id)

    def is_held(self, model_id: str) -> bool:
        """Whether the model is on this machine (or built in) without any download."""
        src = self._sources.get(model_id)
        if src is not None:
            if src.path is not None:
                return src.path.is_dir()
            assert src.repo is not None
            return self._local_snapshot(src.repo, src.revision) is not None
        if self.settings.tiny_models and model_id in tiny_models.TINY_MODELS:
            return True  # built in seconds from code, no download
        return False

    def held_model_ids(self) -> list[str]:
        """The model IDs to declare on-chain."""
        return [mid for mid in self.known_ids() if self.is_held(mid)]

    # --- Hugging Face ---------------------------------------------------------------

    def _local_snapshot(self, repo: str, revision: str | None) -> Path | None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(
                snapshot_download(
                    repo,
                    revision=revision,
                    cache_dir=self.settings.hf_cache_dir,
                    local_files_only=True,
                )
            )
        except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
            return None

    def _hub(self, model_id: str, repo: str, revision: str | None, *, download: bool) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        local = self._local_snapshot(repo, revision)
        if local is not None:
            return local
        if not download or _hub_offline():
            raise ModelUnavailable(
                f"{model_id}: {repo} is not in the local cache and downloads are off"
            )
        log.info("downloading %s from Hugging Face (%s)", model_id, repo)
        try:
            path = snapshot_download(
                repo,
                revision=revision,
                cache_dir=self.settings.hf_cache_dir,
                allow_patterns=ALLOW_PATTERNS,
                ignore_patterns=IGNORE_PATTERNS,
            )
        except GatedRepoError as e:  # exists; access depends on this node's token
            raise ModelUnavailable(f"{model_id}: {repo} is gated: {e}") from e
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise UnknownModel(f"{model_id}: Hugging Face has no {repo}: {e}") from e
        except Exception as e:  # network, disk, auth: this node's problem, not the task's
            raise ModelUnavailable(f"{model_id}: download of {repo} failed: {e}") from e
        log.info("downloaded %s into %s", model_id, path)
        return Path(path)
