"""Retention: delete old results and arguments while the relay keeps serving.

Results of a delivery go once its attestation was recorded ``older_than_s`` ago (the
creator has had that long to download them). Arguments go once they were last used
(uploaded, uploaded again, or read) that long ago *and* every task the relay knows to use
them is final on-chain; what the relay knows is learnt from the chain for each task it has
seen (its deliveries and missing-arguments marks) and kept in the ``task_args`` table, so a
task is read again only until it is final.

Safe next to a serving relay on the same database and blob store: every delete re-checks its
condition in the deleting transaction, result blobs are deleted after their rows (a reader
never gets a row whose blobs are gone from under it for long), and a shared arguments blob
is deleted under the arguments write lock (see :meth:`Repository.delete_args`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from .blobs import BlobNotFound
from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskFacts:
    """What pruning needs to know of a task on-chain."""

    args_hash: str  # 0x-hex
    creator: str
    final: bool


@dataclass
class PruneReport:
    deliveries: int = 0
    result_files: int = 0
    result_bytes: int = 0
    args: int = 0
    args_blobs: int = 0
    args_bytes: int = 0
    args_kept_unfinished: int = 0
    tasks_checked: int = 0
    chain_error: str | None = None

    def summary(self) -> str:
        out = (
            f"removed {self.deliveries} deliveries ({self.result_files} files, {self.result_bytes} bytes) and "
            f"{self.args} argument uploads ({self.args_blobs} blobs, {self.args_bytes} bytes); "
            f"kept {self.args_kept_unfinished} argument uploads of unfinished tasks; "
            f"checked {self.tasks_checked} tasks on-chain"
        )
        if self.chain_error:
            out += f"; arguments NOT pruned, the chain could not be read: {self.chain_error}"
        return out


def prune(
    store: Store,
    older_than_s: float,
    task_facts: Callable[[int], TaskFacts | None],
    *,
    now: float | None = None,
) -> PruneReport:
    """Deletes what is older than ``older_than_s``; ``task_facts(task_id)`` reads a task on-chain
    (None when the market has no such task; raises when the chain cannot be read)."""
    cutoff = (time.time() if now is None else now) - older_than_s
    report = PruneReport()
    repo = store.repo

    # Learn the tasks first: the deliveries pruned below are the relay's record of them.
    for task_id in repo.tasks_to_check():
        try:
            facts = task_facts(task_id)
        except Exception as exc:  # the chain is down: results may go, arguments must wait
            report.chain_error = " ".join(str(exc).split())[:300]
            log.warning("prune: cannot read task %d on-chain (%s): arguments are kept this time", task_id, exc)
            break
        report.tasks_checked += 1
        if facts is not None:
            repo.record_task_args(task_id, facts.args_hash, facts.creator, facts.final)

    while batch := repo.attested_before(cutoff):
        for delivery in batch:
            files = repo.delete_delivery(delivery.task_id, cutoff)
            if files is None:
                continue
            report.deliveries += 1
            for f in files:
                try:
                    store.blobs.delete(f.blob_key)
                except BlobNotFound:
                    pass
                report.result_files += 1
                report.result_bytes += f.size

    if report.chain_error is not None:
        return report
    for record in repo.args_used_before(cutoff):
        if repo.unfinished_tasks_using(record.args_hash, record.uploader):
            report.args_kept_unfinished += 1
            continue
        dropped: list[str] = []

        def drop(key: str) -> None:
            store.blobs.delete(key)
            dropped.append(key)

        if repo.delete_args(record.args_hash, record.uploader, cutoff, drop):
            report.args += 1
            if dropped:
                report.args_blobs += 1
                report.args_bytes += record.size
    log.info("prune: %s", report.summary())
    return report
