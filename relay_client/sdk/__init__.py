"""The application SDK: `CrynuxClient` and its typed errors (see relay_client.sdk.client)."""
from .chain import TxRecord
from .client import CrynuxClient
from .errors import (
    CrynuxError,
    InsufficientBalance,
    RelayUnreachable,
    ResultVerificationFailed,
    TaskAborted,
    TaskTimeout,
    TransactionFailed,
)
from .models import ImageResult, Phase, Progress, TaskEstimate, TaskReport, TextResult

__all__ = [
    "CrynuxClient", "CrynuxError", "ImageResult", "InsufficientBalance", "Phase", "Progress", "RelayUnreachable",
    "ResultVerificationFailed", "TaskAborted", "TaskEstimate", "TaskReport", "TaskTimeout", "TextResult",
    "TransactionFailed", "TxRecord",
]
