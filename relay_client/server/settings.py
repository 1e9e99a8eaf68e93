"""Tunable limits and timings of the relay server."""
from __future__ import annotations

from pydantic import BaseModel, Field

KiB = 1024
MiB = 1024 * KiB


class RelaySettings(BaseModel):
    """Everything the HTTP layer needs to know besides its collaborators."""

    signature_window_s: int = Field(60, ge=1, description="accepted clock skew of a signed request")
    max_args_bytes: int = Field(256 * KiB, ge=1)
    max_result_file_bytes: int = Field(20 * MiB, ge=1)
    max_task_result_bytes: int = Field(200 * MiB, ge=1)
    max_result_files: int = Field(32, ge=1, description="files per delivery (image tasks have <= 10)")
    multipart_overhead_bytes: int = Field(
        1 * MiB, ge=0, description="allowance for multipart framing and form fields above the file limit"
    )
    max_unsigned_body_bytes: int = Field(64 * KiB, ge=0, description="body limit of signed reads")
    attest_wait_s: float = Field(30.0, ge=0, description="how long an upload waits for its attestation")
    attest_retry_interval_s: float = Field(5.0, gt=0, description="period of the pending-attestation worker")
    attest_deadline_s: float = Field(120.0, gt=0, description="one attestation attempt's deadline")
    args_grace_s: float = Field(
        30.0, ge=0, description="how long after a task starts (chain time) its arguments may still be "
        "uploaded; later, the task is marked as having none and its nodes commit the error score",
    )
    gc_grace_s: float = Field(0.0, ge=0, description="min age of an unreferenced blob deleted at startup")

    # --- admission (relay_client.server.guard): checked before a request body is read -------
    max_inflight_body_bytes: int = Field(
        1024 * MiB, ge=1, description="global budget of request-body bytes being received at once (a "
        "body reserves its declared length, or its route's limit when chunked); over it: 503",
    )
    body_grace_s: float = Field(
        10.0, gt=0, description="a body may take this long before body_min_rate_bytes_s applies",
    )
    body_min_rate_bytes_s: int = Field(
        8 * KiB, ge=1, description="after the grace, a body must have arrived at this average rate "
        "(n bytes by grace + n / rate seconds), else 408 and the connection is closed",
    )
    max_uploads_per_signer: int = Field(4, ge=1, description="bodies in flight per signer (and client IP)")
    max_uploads_per_ip: int = Field(16, ge=1, description="bodies in flight per client IP")
    ip_rate_per_s: float = Field(
        20.0, gt=0, description="per client IP: requests without valid signature headers (public "
        "routes, missing or malformed headers), tokens a second",
    )
    ip_burst: int = Field(60, ge=1)
    auth_fail_rate_per_s: float = Field(
        2.0, gt=0, description="per client IP: signatures that failed verification (bad, replayed); "
        "once spent, only signers already authenticated from that IP are verified",
    )
    auth_fail_burst: int = Field(20, ge=1)
    signer_rate_per_s: float = Field(50.0, gt=0, description="per authenticated signer, requests a second")
    signer_burst: int = Field(200, ge=1)
    rate_table_size: int = Field(65536, ge=16, description="keys remembered by each rate-limit table")
    refusal_delay_s: float = Field(
        1.0, ge=0, description="a 429 for a client over its rate is answered after this delay (a tarpit: "
        "a flooding connection gets one answer a second instead of one per request it can parse)",
    )
    max_delayed_refusals: int = Field(
        1024, ge=0, description="refusals held at once; beyond, they are answered at once and the "
        "connection closed",
    )
