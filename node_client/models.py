"""Model registry: model IDs (`base:<name>`, `lora:<name>`) -> local folders.

A model comes from one of:
- a configured local folder (`path`);
- a configured Hugging Face repo (`repo`, optional `revision`; `{id: "base:org/name"}` alone
  means repo `org/name`), downloaded with huggingface_hub into the usual HF cache;
- a built-in tiny seeded model (`base:tiny-sd`, ... see tiny_models.TINY_MODELS), built on
  first use into a cache folder;
- an unconfigured ID `base:org/name` whose repo matches `allowed_repos` (the operator's
  allow-list: downloaded like a configured repo), or, with `implicit_hf`, that is already in
  the local HF cache (never downloaded).
Nothing else is ever fetched: a task cannot make the node download a repository its
operator did not name.

Downloads fetch configs, tokenizers and safetensors weights only (never pickle: no .bin,
.pt, .ckpt ...), and only when the repo's files (sizes from the Hub API, checked before the
first byte is fetched) fit in `max_download_bytes`.

Verdicts: a name that cannot exist (path traversal, bad characters ... see
crynux_common.schemas.check_model_name) raises UnknownModel, an ArgsError: every honest
node agrees, the task gets the error score. A well-formed name this node does not hold and
may not fetch raises ModelUnavailable: another node (an auditor) may hold it, so the node
commits nothing for it (an error score would be slashable).

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

import fnmatch
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crynux_common.schemas import ArgsError, check_model_name, parse_model_id, split_model_id
from node_client import tiny_models
from node_client.inference.errors import ModelUnavailable

log = logging.getLogger(__name__)

#: What snapshot_download fetches: configs, tokenizers, safetensors weights. No pickle
#: (.bin, .pt, .pth, .ckpt, .pkl), no code (.py), no other weight formats.
ALLOW_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model", "*.jinja", "*.tiktoken"]
IGNORE_PATTERNS = [
    "*non_ema*", "*.ckpt", "*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.py",
    "*.onnx", "*.msgpack", "*.h5",
]
#: Default bound on one model's download (bytes of the files ALLOW_PATTERNS selects).
DEFAULT_MAX_DOWNLOAD_BYTES = 32 * 2**30
#: More files than this in a repo: the Hub's file list is not complete (no size check possible).
MAX_REPO_FILES = 1000


class UnknownModel(ArgsError):
    """The model ID names no model that can exist: the task's arguments are invalid."""


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
        parse_model_id(v)
        return v

    @field_validator("repo")
    @classmethod
    def _valid_repo(cls, v: str | None) -> str | None:
        if v is not None:
            check_model_name(v)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if self.path is not None and self.repo is not None:
            raise ValueError(f"model {self.id}: give one of 'path' or 'repo', not both")
        if self.path is None and self.repo is None and "/" not in split_model_id(self.id)[1]:
            raise ValueError(f"model {self.id}: give 'path' or 'repo' (the name is no 'org/name' repo)")
        return self

    @property
    def hub_repo(self) -> str | None:
        """The Hugging Face repo of this model (None for a local folder)."""
        if self.path is not None:
            return None
        return self.repo or split_model_id(self.id)[1]


class RegistrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSource] = Field(default_factory=list)
    #: Hugging Face cache folder; None uses the HF default (HF_HOME / ~/.cache/huggingface).
    hf_cache_dir: Path | None = None
    #: Fetch missing configured (or allow-listed) models from the Hub when a task needs them.
    allow_download: bool = True
    #: Unconfigured IDs `base:org/name` whose repo matches one of these patterns (fnmatch,
    #: case-sensitive: "stabilityai/*", "Qwen/Qwen2.5-*-Instruct") may be downloaded.
    allowed_repos: list[str] = Field(default_factory=list)
    #: Use unconfigured IDs `base:org/name` already in the local HF cache (never downloads).
    implicit_hf: bool = False
    #: Largest download of one model in bytes (configs + safetensors); None: no bound.
    max_download_bytes: int | None = Field(default=DEFAULT_MAX_DOWNLOAD_BYTES, gt=0)
    #: Offer the built-in tiny seeded models (tests, demo).
    tiny_models: bool = True
    tiny_cache_dir: Path | None = None

    @field_validator("allowed_repos")
    @classmethod
    def _valid_patterns(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not pattern or pattern.count("/") != 1 or "\\" in pattern or ".." in pattern:
                raise ValueError(f"allowed_repos: {pattern!r} is no 'org/name' pattern")
        return v


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


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

    def is_allowed_repo(self, repo: str) -> bool:
        """Whether the operator's allow-list lets an unconfigured ID download `repo`."""
        return any(fnmatch.fnmatchcase(repo, p) for p in self.settings.allowed_repos)

    def resolve(self, model_id: str) -> Path:
        """The local folder of `model_id`, fetching or building it if needed and allowed.

        Raises UnknownModel when the ID can name no model, ModelUnavailable when the model
        may exist but this node does not hold it and may not (or cannot now) fetch it.
        """
        try:
            _, name = parse_model_id(model_id)
        except ValueError as e:
            raise UnknownModel(str(e)) from e
        src = self._sources.get(model_id)
        if src is not None:
            if src.path is not None:
                if not src.path.is_dir():
                    raise ModelUnavailable(f"{model_id}: configured folder {src.path} is missing")
                return src.path
            repo = src.hub_repo
            assert repo is not None
            return self._hub(model_id, repo, src.revision, download=self.settings.allow_download)
        if self.settings.tiny_models and model_id in tiny_models.TINY_MODELS:
            return tiny_models.materialize(model_id, self.settings.tiny_cache_dir)
        if "/" in name and self.is_allowed_repo(name):
            return self._hub(model_id, name, None, download=self.settings.allow_download)
        if "/" in name and self.settings.implicit_hf:
            local = self._local_snapshot(name, None)
            if local is not None:
                return local
        raise ModelUnavailable(
            f"{model_id}: not held by this node (not configured, not built in"
            f"{', not in the local Hugging Face cache' if self.settings.implicit_hf and '/' in name else ''})"
            " and not in allowed_repos, so never downloaded"
        )

    def download(self, model_id: str) -> Path:
        """Fetch a configured or allow-listed Hugging Face model now, with a progress bar."""
        src = self._sources.get(model_id)
        if src is not None and src.hub_repo is not None:
            return self._hub(model_id, src.hub_repo, src.revision, download=True)
        return self.resolve(model_id)

    def is_held(self, model_id: str) -> bool:
        """Whether the model is on this machine (or built in) without any download."""
        src = self._sources.get(model_id)
        if src is not None:
            if src.path is not None:
                return src.path.is_dir()
            repo = src.hub_repo
            assert repo is not None
            return self._local_snapshot(repo, src.revision) is not None
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
        try:
            self._check_download_size(model_id, repo, revision)
            log.info("downloading %s from Hugging Face (%s)", model_id, repo)
            path = snapshot_download(
                repo,
                revision=revision,
                cache_dir=self.settings.hf_cache_dir,
                allow_patterns=ALLOW_PATTERNS,
                ignore_patterns=IGNORE_PATTERNS,
            )
        except ModelUnavailable:
            raise
        except GatedRepoError as e:  # exists; access depends on this node's token
            raise ModelUnavailable(f"{model_id}: {repo} is gated: {e}") from e
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            # Not an error score: the repo may be private, or held by other nodes as a
            # configured folder under this ID; an auditor holding it would compute a result.
            raise ModelUnavailable(f"{model_id}: Hugging Face has no {repo} (for this node): {e}") from e
        except Exception as e:  # network, disk, auth: this node's problem, not the task's
            raise ModelUnavailable(f"{model_id}: download of {repo} failed: {e}") from e
        log.info("downloaded %s into %s", model_id, path)
        return Path(path)

    def _check_download_size(self, model_id: str, repo: str, revision: str | None) -> None:
        """Refuse (ModelUnavailable) a repo whose selected files exceed max_download_bytes,
        from the file sizes the Hub API lists, before anything is fetched."""
        limit = self.settings.max_download_bytes
        if limit is None:
            return
        from huggingface_hub import HfApi
        from huggingface_hub.utils import filter_repo_objects

        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
        siblings: list[Any] = list(info.siblings or [])
        if not siblings or len(siblings) > MAX_REPO_FILES:
            raise ModelUnavailable(
                f"{model_id}: the Hub lists {len(siblings)} files for {repo}: cannot check the "
                f"download size against max_download_bytes ({_gib(limit)}); not downloaded"
            )
        files = list(filter_repo_objects(
            siblings, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS,
            key=lambda f: f.rfilename,
        ))
        sizes = {f.rfilename: f.lfs.size if f.lfs is not None else f.size for f in files}
        unknown = [name for name, size in sizes.items() if size is None]
        if unknown:
            raise ModelUnavailable(
                f"{model_id}: the Hub gives no size for {unknown[:3]} in {repo}: cannot check "
                f"the download size against max_download_bytes; not downloaded"
            )
        total = sum(int(size) for size in sizes.values())
        if total > limit:
            raise ModelUnavailable(
                f"{model_id}: {repo} is {_gib(total)} in {len(files)} files, over max_download_bytes "
                f"({_gib(limit)}): not downloaded"
            )
        log.info("%s: %s is %s in %d files (limit %s)", model_id, repo, _gib(total), len(files), _gib(limit))
