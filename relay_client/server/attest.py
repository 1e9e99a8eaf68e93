"""Delivery attestations: sent right after an upload, retried by a worker until mined.

A delivery row is committed before its attestation is sent, so a relay that dies in
between finds the row still pending at startup and attests it then.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal

from starlette.concurrency import run_in_threadpool

from ..chain import AttestRejected, ChainError, TaskChain
from ..storage import Repository, StorageError
from .funds import FundsMonitor
from .metrics import RelayMetrics

log = logging.getLogger(__name__)

AttestState = Literal["mined", "already_delivered", "pending", "rejected"]

#: How often the worker re-reads the relay's balance (it warns when low).
FUNDS_CHECK_INTERVAL_S = 60.0


@dataclass(frozen=True)
class AttestOutcome:
    state: AttestState
    tx_hash: str | None = None
    block_number: int | None = None
    error: str | None = None


class Attestor:
    def __init__(self, chain: TaskChain, repo: Repository, metrics: RelayMetrics, *, deadline_s: float) -> None:
        self._chain = chain
        self._repo = repo
        self._metrics = metrics
        self._deadline_s = deadline_s
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self.funds = FundsMonitor(chain, metrics)

    def attest(self, task_id: int, wait_s: float | None = None,
               on_sent: Callable[[], None] | None = None) -> AttestOutcome:
        """One attestation attempt (blocking) of a stored delivery, recorded in the database.
        Once the chain accepts the transaction its hash is recorded (the results may be served
        from then on) and `on_sent` is called."""
        with self._lock:
            if task_id in self._inflight:
                return AttestOutcome("pending", error="an attestation of this task is in progress")
            self._inflight.add(task_id)
        try:
            deadline = time.time() + (self._deadline_s if wait_s is None else wait_s)
            try:
                result = self._chain.attest_delivery(
                    task_id, deadline=deadline, on_sent=lambda tx: self._sent(task_id, tx, on_sent))
            except AttestRejected as exc:
                log.error("the market refused the delivery attestation of task %d: %s", task_id, exc)
                self._repo.mark_attest_failed(task_id, str(exc))
                self._metrics.attestations.labels("rejected").inc()
                return AttestOutcome("rejected", error=str(exc))
            except ChainError as exc:
                log.warning("attestation of task %d still pending: %s", task_id, exc)
                self._repo.note_attest_error(task_id, str(exc))
                self._metrics.attestations.labels("retry").inc()
                if "insufficient funds" in str(exc).lower():
                    self._check_funds()  # logs the low-balance warning
                return AttestOutcome("pending", error=str(exc))
            self.funds.record_gas(result.gas_used)
            self._repo.mark_attested(task_id, result.tx_hash)
            if result.already_delivered:
                self._metrics.attestations.labels("already").inc()
                return AttestOutcome("already_delivered")
            self._metrics.attestations.labels("mined").inc()
            return AttestOutcome("mined", result.tx_hash, result.block_number)
        finally:
            with self._lock:
                self._inflight.discard(task_id)

    def _sent(self, task_id: int, tx_hash: str, on_sent: Callable[[], None] | None) -> None:
        self._repo.note_attest_sent(task_id, tx_hash)
        if on_sent is not None:
            on_sent()

    def _check_funds(self) -> None:
        try:
            self.funds.refresh()
        except ChainError as exc:
            log.warning("cannot read the relay's balance: %s", exc)

    def retry_pending_once(self) -> int:
        """Attests every pending delivery once; returns how many are still pending."""
        pending = self._repo.pending_attestations()
        left = 0
        for d in pending:
            if self.attest(d.task_id).state == "pending":
                left += 1
        self._metrics.pending_attestations.set(left)
        return left

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """The background worker: every ``interval_s``, retry what is pending; every
        FUNDS_CHECK_INTERVAL_S, check the relay's balance (a warning when low)."""
        funds_checked = float("-inf")
        while not stop.is_set():
            if time.monotonic() - funds_checked >= FUNDS_CHECK_INTERVAL_S:
                funds_checked = time.monotonic()
                await run_in_threadpool(self._check_funds)
            try:
                await run_in_threadpool(self.retry_pending_once)
            except StorageError as exc:  # a locked or broken database: the next round retries
                log.warning("the attestation worker skipped a round: %s", exc)
            except Exception:  # keep the worker alive; the next round retries
                log.exception("the attestation worker failed a round")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except asyncio.TimeoutError:
                pass
