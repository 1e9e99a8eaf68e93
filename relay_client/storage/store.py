"""Bytes and rows together: write blobs first, commit the row last, clean up on startup.

The order is what makes the relay restart-safe. A blob is complete before it is visible
(temp file, fsync, rename); the row that makes it reachable is committed only after all
its blobs exist; the HTTP answer is sent only after that commit. A crash before the
commit leaves unreferenced blobs (and, for local files, temp files), which
:meth:`Store.recover` deletes before the relay serves again.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

from .blobs import BlobStore, BlobUnavailable, older_than
from .repository import AlreadyDelivered, ArgsRecord, Delivery, Repository, ResultFile, StorageError

log = logging.getLogger(__name__)

#: Reading arguments renews them only when their last use is older than this.
TOUCH_EVERY_S = 3600.0
#: The blob the /health probe writes and deletes (outside args/ and results/).
PROBE_KEY = "health/probe"


@dataclass(frozen=True)
class IncomingFile:
    """A result file received from a node, spooled to a temporary file."""

    name: str
    content_type: str
    file: BinaryIO
    size: int
    sha256: str


@dataclass(frozen=True)
class RecoveryReport:
    temp_files_removed: int
    orphans_removed: int


def args_key(args_hash: str) -> str:
    return f"args/{args_hash.lower().removeprefix('0x')}"


class Store:
    """The relay's persistent state: a :class:`Repository` and a :class:`BlobStore`."""

    def __init__(self, repo: Repository, blobs: BlobStore) -> None:
        self.repo = repo
        self.blobs = blobs

    # --- arguments ---------------------------------------------------------------------------

    def save_args(self, args_hash: str, uploader: str, data: bytes) -> tuple[ArgsRecord, bool]:
        """Stores arguments (content-addressed blob, then the row). Returns (record, created).

        Uploading arguments again renews them (retention counts from their last use). The
        blob is checked again after the row is committed: `crynux-relay prune` may have
        deleted a shared blob in between, and then it is written again."""
        existing = self.repo.get_args(args_hash, uploader)
        if existing is not None and self.repo.touch_args(args_hash, uploader):
            self._ensure_blob(existing.blob_key, data)
            return existing, False
        key = args_key(args_hash)
        if not self.blobs.exists(key):
            self.blobs.put_bytes(key, data)
        created = self.repo.put_args(args_hash, uploader, key, len(data))
        self._ensure_blob(key, data)
        record = self.repo.get_args(args_hash, uploader)
        assert record is not None
        return record, created

    def _ensure_blob(self, key: str, data: bytes) -> None:
        if not self.blobs.exists(key):
            log.warning("blob %s was deleted under a new upload (a concurrent prune): writing it again", key)
            self.blobs.put_bytes(key, data)

    def load_args(self, record: ArgsRecord) -> bytes:
        """The arguments' bytes; a read renews them (at most once an hour: a read stays a read)."""
        data = self.blobs.get_bytes(record.blob_key)
        if time.time() - record.created_at > TOUCH_EVERY_S:
            try:
                self.repo.touch_args(record.args_hash, record.uploader)
            except StorageError as exc:  # serving them matters more than renewing them
                log.warning("could not renew arguments %s: %s", record.args_hash, exc)
        return data

    # --- results -----------------------------------------------------------------------------

    def save_delivery(
        self,
        *,
        task_id: int,
        node: str,
        task_type: int,
        score: bytes,
        salt: bytes,
        files: Sequence[IncomingFile],
    ) -> Delivery:
        """Writes every file under a fresh upload id, then commits the delivery row.

        Raises :class:`AlreadyDelivered` (after removing its own blobs) if the task has one.
        """
        if self.repo.get_delivery(task_id) is not None:
            raise AlreadyDelivered(f"task {task_id} already has a delivery")
        upload_id = uuid.uuid4().hex
        written: list[ResultFile] = []
        try:
            for idx, f in enumerate(files):
                key = f"results/{task_id}/{upload_id}/{idx}"
                f.file.seek(0)
                self.blobs.put_file(key, f.file)
                written.append(ResultFile(idx, f.name, f.content_type, key, f.size, f.sha256))
            delivery = Delivery(
                task_id=task_id, node=node.lower(), upload_id=upload_id, task_type=task_type,
                score="0x" + score.hex(), salt="0x" + salt.hex(), num_files=len(files),
                total_size=sum(f.size for f in files), created_at=time.time(),
            )
            self.repo.put_delivery(delivery, written)
        except BaseException:
            for w in written:
                try:
                    self.blobs.delete(w.blob_key)
                except Exception:  # best effort: recover() removes what is left
                    log.warning("could not remove blob %s of a failed upload", w.blob_key)
            raise
        log.info("stored the results of task %d: %d files, %d bytes", task_id, len(files), delivery.total_size)
        return delivery

    def result_chunks(self, f: ResultFile) -> Iterator[bytes]:
        return self.blobs.iter_chunks(f.blob_key)

    # --- health -------------------------------------------------------------------------------

    def probe_blobs(self) -> None:
        """Writes, reads back and deletes a small blob; raises BlobError when the store
        cannot take writes."""
        payload = f"probe {time.time()}".encode()
        key = f"{PROBE_KEY}-{os.getpid()}"
        self.blobs.put_bytes(key, payload)
        try:
            if self.blobs.get_bytes(key) != payload:
                raise BlobUnavailable(f"blob {key} read back different bytes")
        finally:
            self.blobs.delete(key)

    # --- startup ------------------------------------------------------------------------------

    def recover(self, *, grace_seconds: float = 0.0) -> RecoveryReport:
        """Deletes what interrupted uploads left: temp files, and blobs no row references
        (older than ``grace_seconds``, for stores shared by several relay processes)."""
        temp = self.blobs.remove_incomplete()
        referenced = self.repo.referenced_blob_keys()
        orphans = 0
        now = time.time()
        for prefix in ("args/", "results/"):
            for info in list(self.blobs.list(prefix)):
                if info.key not in referenced and older_than(info, grace_seconds, now):
                    self.blobs.delete(info.key)
                    orphans += 1
        if temp or orphans:
            log.warning("recovery: removed %d temporary files and %d unreferenced blobs", temp, orphans)
        return RecoveryReport(temp, orphans)


def sha256_file(f: BinaryIO) -> tuple[str, int]:
    f.seek(0)
    h = hashlib.sha256()
    n = 0
    while chunk := f.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    f.seek(0)
    return h.hexdigest(), n
