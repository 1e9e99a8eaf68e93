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


class RelayFundsOut(BaseModel):
    """The relay account's gas: what its attestations of deliveries cost and how many it pays for."""

    balance_wei: int
    balance_eth: float
    gas_price_wei: int
    attest_gas: int = Field(description="gas of one attestDelivery: the average of the relay's own, or "
                                        "an upper estimate before it has mined any")
    attest_gas_measured: bool
    attestations_covered: int = Field(description="balance // (attest_gas x gas price)")
    warn_below: int = Field(description="a warning is logged below this many attestations")
    low: bool


class Health(BaseModel):
    status: Literal["ok", "degraded", "unhealthy"] = Field(
        description="unhealthy (HTTP 503): the database or blob store cannot take writes, the chain is "
        "unreachable or the relay cannot pay for an attestation; degraded: low on gas or no relay key")
    database: bool = Field(description="the database answers and takes writes")
    blob_store: bool = Field(True, description="the blob store takes writes")
    chain: bool
    block_number: int | None
    relay_address: str
    pending_attestations: int
    funds: RelayFundsOut | None = Field(None, description="null without a relay key or when the chain is down")
    problems: list[str] = Field(default_factory=list, description="what is wrong, one line each")
