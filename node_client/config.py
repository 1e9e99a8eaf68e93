"""The node's configuration: a YAML or TOML file, overridden by CRYNUX_NODE_* variables.

    rpc_url: http://127.0.0.1:8545
    deployment_file: deployments/local.json
    relay_url: http://127.0.0.1:8080
    keystore: node-key.json              # an eth-account keystore (or ape_account: alias)
    password_file: node-key.password     # or the variable named by password_env
    data_dir: node-data                  # journal + result files
    torch_threads: 1
    gpu: {name: "CPU-TEST", vram_gb: 8}  # declare this instead of the detected hardware
    models:
      tiny_models: true
      models: [{id: "base:my-sd", path: /models/sd15}, {id: "base:stabilityai/sd-turbo"}]
      allowed_repos: []                  # extra Hub repos tasks may name ("org/*" patterns)
      max_download_bytes: 34359738368    # 32 GiB per model

Every field can be set from the environment: CRYNUX_NODE_RPC_URL, CRYNUX_NODE_POLL_INTERVAL,
nested ones with "__": CRYNUX_NODE_MODELS__TINY_MODELS=false, CRYNUX_NODE_GPU__NAME=...
The environment wins over the file. Relative paths in the file are relative to the file.
The keystore password itself is never part of the configuration (see node_client.wallet).
"""
from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if TYPE_CHECKING:
    from node_client.models import RegistrySettings

ENV_PREFIX = "CRYNUX_NODE_"
CONFIG_ENV = "CRYNUX_NODE_CONFIG"
#: Default name of the variable holding the keystore password.
DEFAULT_PASSWORD_ENV = "CRYNUX_NODE_PASSWORD"

#: Test-only behaviours (see NodeConfig.behaviour).
Behaviour = Literal["honest", "wrong_image"]


class ConfigError(Exception):
    """The configuration file is missing or invalid."""


class ModelSourceConfig(BaseModel):
    """node_client.models.ModelSource (mirrored: this module must not import torch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    path: Path | None = None
    repo: str | None = None
    revision: str | None = None


class ModelsConfig(BaseModel):
    """node_client.models.RegistrySettings, mirrored field for field so that reading the
    configuration does not import torch (the loop process never needs it); converted and
    fully validated by `NodeConfig.registry_settings()`."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelSourceConfig] = Field(default_factory=list)
    hf_cache_dir: Path | None = None
    #: Download configured (and allow-listed) Hugging Face models that are not cached yet.
    allow_download: bool = True
    #: Repos an unconfigured task model `base:org/name` may be downloaded from (fnmatch
    #: patterns, e.g. "stabilityai/*"); empty: a task never makes the node fetch anything.
    allowed_repos: list[str] = Field(default_factory=list)
    #: Use unconfigured `base:org/name` models already in the local HF cache (no download).
    implicit_hf: bool = False
    #: Largest download of one model (configs + safetensors, sizes checked on the Hub first).
    max_download_bytes: int | None = Field(default=32 * 2**30, gt=0)
    tiny_models: bool = True
    tiny_cache_dir: Path | None = None


class GpuOverride(BaseModel):
    """What to declare on-chain instead of the detected hardware (e.g. a CPU test machine)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    vram_gb: int = Field(ge=1, le=2**16 - 1)


class NodeConfig(BaseModel):
    """The node's settings (read them with `load_config`)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    # --- network ---
    rpc_url: str = "http://127.0.0.1:8545"
    deployment_file: Path = Path("deployments/local.json")
    relay_url: str = "http://127.0.0.1:8080"

    # --- key (one of keystore / ape_account) ---
    keystore: Path | None = None
    ape_account: str | None = None
    #: Ape's data folder (default $APE_DATA_FOLDER or ~/.ape); its accounts/<alias>.json is read.
    ape_data_folder: Path | None = None
    #: Name of the environment variable holding the keystore password.
    password_env: str = DEFAULT_PASSWORD_ENV
    #: A file holding the keystore password (first line); wins over password_env.
    password_file: Path | None = None

    # --- local state ---
    data_dir: Path = Path("node-data")

    # --- inference ---
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1, le=512)
    #: Bytes of model weights kept warm; None: the engine's default (share of (V)RAM).
    memory_budget_bytes: int | None = Field(default=None, gt=0)
    #: Import the diffusers/transformers pipelines when the engine starts, not at the first task.
    preload_inference_libraries: bool = True
    #: Models loaded when the engine starts (kept warm): image and text model IDs.
    warm_image_models: list[str] = Field(default_factory=list)
    warm_text_models: list[str] = Field(default_factory=list)
    #: Seconds the engine process may take to start (imports torch, builds the engine).
    engine_start_timeout: float = Field(default=300.0, gt=0)

    # --- hardware declared on-chain ---
    gpu: GpuOverride | None = None
    #: Name declared by a machine without CUDA when `gpu` is not set.
    cpu_gpu_name: str = "CPU"

    # --- join ---
    #: Stake offered by `crynux-node join`, in CNX (18 decimals).
    stake_cnx: Decimal = Field(default=Decimal(400), gt=0)
    #: Client version declared at join [major, minor, patch].
    client_version: tuple[int, int, int] = (1, 0, 0)
    #: Use an EIP-2612 permit for the stake instead of approve + join.
    join_with_permit: bool = True

    # --- loop ---
    poll_interval: float = Field(default=2.0, gt=0)
    #: Every this many polls, the loop re-reads currentTask and every open journal task.
    reconcile_every: int = Field(default=5, ge=1)
    #: Most blocks one eth_getLogs call asks for.
    log_chunk_blocks: int = Field(default=2000, ge=1)
    receipt_timeout: float = Field(default=120.0, gt=0)
    #: A relay or RPC call that fails is retried after this many seconds (doubling, capped).
    retry_backoff: float = Field(default=1.0, gt=0)
    #: Inference attempts (each on a fresh engine) before the task is left to time out.
    max_inference_attempts: int = Field(default=2, ge=1)
    #: Resume at start-up when the loop itself paused the node at its last shutdown.
    auto_resume: bool = True
    log_level: str = "INFO"

    #: TEST ONLY. "honest" (the default) computes what the arguments ask for. "wrong_image"
    #: makes this node cheat: it runs the task with another seed (a plausible but wrong
    #: result, which the relay accepts and an audit catches). The end-to-end tests use it to
    #: have a dishonest node; never set it on a real node: it gets slashed.
    behaviour: Behaviour = "honest"

    @model_validator(mode="after")
    def _one_key_source(self) -> NodeConfig:
        if self.keystore is not None and self.ape_account is not None:
            raise ValueError("give one of 'keystore' or 'ape_account', not both")
        return self

    def registry_settings(self) -> RegistrySettings:
        """The model registry's settings (imports the inference stack)."""
        from node_client.models import RegistrySettings

        return RegistrySettings.model_validate(self.models.model_dump())

    # --- derived paths ---

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.sqlite3"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def stake_wei(self) -> int:
        return int(self.stake_cnx * 10**18)


class _FromEnvironment(BaseSettings, NodeConfig):
    """NodeConfig read from CRYNUX_NODE_* variables over the file's values."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the values read from the file (passed as init kwargs).
        return env_settings, init_settings


_PATH_FIELDS = ("deployment_file", "keystore", "password_file", "data_dir", "ape_data_folder")


def read_config_file(path: Path) -> dict[str, Any]:
    """The raw mapping of a YAML (.yaml/.yml) or TOML (.toml) file, paths made absolute."""
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is malformed: {exc}") from exc
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    base = path.resolve().parent
    for key in _PATH_FIELDS:
        if isinstance(data.get(key), str):
            p = Path(data[key]).expanduser()
            data[key] = str(p if p.is_absolute() else base / p)
    models = data.get("models")
    if isinstance(models, dict):
        for key in ("hf_cache_dir", "tiny_cache_dir"):
            if isinstance(models.get(key), str):
                p = Path(models[key]).expanduser()
                models[key] = str(p if p.is_absolute() else base / p)
        for src in models.get("models") or []:
            if isinstance(src, dict) and isinstance(src.get("path"), str):
                p = Path(src["path"]).expanduser()
                src["path"] = str(p if p.is_absolute() else base / p)
    return data


def load_config(path: str | Path | None = None, **overrides: Any) -> NodeConfig:
    """The configuration from `path` (or $CRYNUX_NODE_CONFIG, or none), the environment and
    `overrides` (e.g. command-line options; they win over everything)."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    data = read_config_file(Path(path)) if path is not None else {}
    try:
        merged = _FromEnvironment(**data).model_dump()
        cfg = NodeConfig.model_validate({**merged, **overrides})
    except ValidationError as exc:
        raise ConfigError(f"invalid node configuration{f' in {path}' if path else ''}:\n{exc}") from exc
    return cfg
