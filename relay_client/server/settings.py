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
