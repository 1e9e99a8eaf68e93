"""Typed exceptions of the application SDK. All derive from `CrynuxError`."""
from __future__ import annotations

from typing import Any

from crynux_common.enums import Outcome, TaskStatus


class CrynuxError(Exception):
    """Base class of every SDK error."""


class InsufficientBalance(CrynuxError):
    """The application's account cannot pay: too little CNX for the escrow or ETH for gas."""

    def __init__(self, what: str, have: int, need: int, address: str) -> None:
        unit = "CNX" if what == "CNX" else "ETH"
        super().__init__(f"{address} holds {have / 1e18:g} {unit}, needs {need / 1e18:g} {unit} ({what})")
        self.what = what
        self.have = have
        self.need = need
        self.address = address


class TransactionFailed(CrynuxError):
    """A transaction reverted; `error` is the contract's custom error name (None if unknown)."""

    def __init__(self, what: str, error: str | None, args: dict[str, Any] | None = None,
                 tx_hash: str | None = None) -> None:
        detail = f"{error}({', '.join(f'{k}={v}' for k, v in (args or {}).items())})" if error else "revert"
        super().__init__(f"{what} reverted: {detail}" + (f" in {tx_hash}" if tx_hash else ""))
        self.what = what
        self.error = error
        self.error_args = args or {}
        self.tx_hash = tx_hash


class TaskAborted(CrynuxError):
    """The task ended without a result for the application: refunded (timeout, slashed executor,
    no consensus), cancelled, evicted from a full queue or expired in the queue. The fee went
    back to the creator."""

    def __init__(self, task_id: int, status: TaskStatus, outcome: Outcome | None = None,
                 refunded: int = 0) -> None:
        why = status.name.lower() + (f" ({outcome.name.lower()})" if outcome is not None else "")
        super().__init__(f"task {task_id} was {why}; {refunded / 1e18:g} CNX refunded")
        self.task_id = task_id
        self.status = status
        self.outcome = outcome
        self.refunded = refunded


class TaskTimeout(CrynuxError):
    """The task did not reach the awaited phase within the SDK's wait time (it may still do so,
    unless `cancelled`: a task still queued is cancelled by `generate_*`, its fee refunded)."""

    def __init__(self, task_id: int, phase: str, waited: float, status: TaskStatus,
                 cancelled: bool = False) -> None:
        what = "; cancelled while queued, fee refunded" if cancelled else ""
        super().__init__(f"task {task_id}: not {phase} after {waited:.0f} s (status {status.name}){what}")
        self.task_id = task_id
        self.phase = phase
        self.waited = waited
        self.status = status
        self.cancelled = cancelled


class RelayUnreachable(CrynuxError):
    """The relay did not answer (connection refused, time-out, 5xx) within the retry window."""


class ResultVerificationFailed(CrynuxError):
    """Downloaded result files do not hash to the score the relay checked against the chain."""
