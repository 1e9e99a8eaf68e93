"""Response models of the relay API (pydantic v2; they make up the OpenAPI description)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ArgsStored(BaseModel):
    args_hash: str = Field(description="keccak256 of the body, 0x-hex")
    uploader: str
    size: int
    created: bool = Field(description="false when this uploader had stored these arguments before")


class Attestation(BaseModel):
    state: Literal["mined", "already_delivered", "pending", "rejected"]
    tx_hash: str | None = None
    block_number: int | None = None
    error: str | None = None


class ResultFileInfo(BaseModel):
    index: int
    name: str
    content_type: str
    size: int
    sha256: str


class Delivered(BaseModel):
    task_id: int
    node: str
    task_type: int
    score: str = Field(description="0x-hex score recomputed from the files ('0x' = error score)")
    files: list[ResultFileInfo]
    total_size: int
    attestation: Attestation


class ResultManifest(BaseModel):
    task_id: int
    task_type: int
    node: str
    score: str
    files: list[ResultFileInfo]
    total_size: int
    attest_tx: str | None


class StorageStatsOut(BaseModel):
    args_count: int
    args_bytes: int
    deliveries: int
    deliveries_attested: int
    deliveries_pending: int
    deliveries_failed: int
    result_files: int
    result_bytes: int


class NetworkStats(BaseModel):
    relay_address: str
    storage: StorageStatsOut
    chain: dict[str, int] | None = Field(description="numbers read from the chain; null when it is unreachable")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    chain: bool
    block_number: int | None
    relay_address: str
    pending_attestations: int
