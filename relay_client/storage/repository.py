"""The relay's database: one class, plain dataclasses in and out (no ORM objects leak)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import create_engine, delete, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .models import ArgsRow, Base, DeliveryRow, MissingArgsRow, ResultFileRow, SeenRequestRow

log = logging.getLogger(__name__)


class StorageError(Exception):
    """A database operation failed."""


class AlreadyDelivered(StorageError):
    """The task already has a delivery."""


@dataclass(frozen=True)
class ArgsRecord:
    args_hash: str
    uploader: str
    blob_key: str
    size: int
    created_at: float


@dataclass(frozen=True)
class ResultFile:
    idx: int
    name: str
    content_type: str
    blob_key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Delivery:
    task_id: int
    node: str
    upload_id: str
    task_type: int
    score: str
    salt: str
    num_files: int
    total_size: int
    created_at: float
    attested: bool = False
    attest_failed: bool = False
    attest_tx: str | None = None
    attest_error: str | None = None
    attested_at: float | None = None


@dataclass(frozen=True)
class StorageStats:
    args_count: int
    args_bytes: int
    deliveries: int
    deliveries_attested: int
    deliveries_pending: int
    deliveries_failed: int
    result_files: int
    result_bytes: int


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full sync, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def _args(row: ArgsRow) -> ArgsRecord:
    return ArgsRecord(row.args_hash, row.uploader, row.blob_key, row.size, row.created_at)


def _delivery(row: DeliveryRow) -> Delivery:
    return Delivery(
        task_id=row.task_id,
        node=row.node,
        upload_id=row.upload_id,
        task_type=row.task_type,
        score=row.score,
        salt=row.salt,
        num_files=row.num_files,
        total_size=row.total_size,
        created_at=row.created_at,
        attested=row.attested,
        attest_failed=row.attest_failed,
        attest_tx=row.attest_tx,
        attest_error=row.attest_error,
        attested_at=row.attested_at,
    )


def _file(row: ResultFileRow) -> ResultFile:
    return ResultFile(row.idx, row.name, row.content_type, row.blob_key, row.size, row.sha256)


class Repository:
    """Relay state in SQL. Thread-safe: every method opens its own session."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._purge_every = 256
        self._since_purge = 0

    @classmethod
    def connect(cls, url: str) -> "Repository":
        repo = cls(make_engine(url))
        repo.create_schema()
        return repo

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _session(self) -> Session:
        return self._sessions()

    # --- arguments -------------------------------------------------------------------------

    def put_args(self, args_hash: str, uploader: str, blob_key: str, size: int) -> bool:
        """Records uploaded arguments; True when new, False when this uploader had them already."""
        row = ArgsRow(
            args_hash=args_hash.lower(), uploader=uploader.lower(), blob_key=blob_key, size=size,
            created_at=time.time(),
        )
        with self._session() as s:
            s.add(row)
            try:
                s.commit()
                return True
            except IntegrityError:
                s.rollback()
                return False

    def get_args(self, args_hash: str, uploader: str) -> ArgsRecord | None:
        with self._session() as s:
            row = s.get(ArgsRow, (args_hash.lower(), uploader.lower()))
            return _args(row) if row else None

    def mark_args_missing(self, task_id: int) -> None:
        """Records for good that the task's arguments never came (idempotent)."""
        with self._session() as s:
            s.add(MissingArgsRow(task_id=task_id, marked_at=time.time()))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()

    def args_missing(self, task_id: int) -> bool:
        with self._session() as s:
            return s.get(MissingArgsRow, task_id) is not None

    def args_uploaders(self, args_hash: str) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(ArgsRow.uploader).where(ArgsRow.args_hash == args_hash.lower())))

    # --- deliveries --------------------------------------------------------------------------

    def put_delivery(self, delivery: Delivery, files: Iterable[ResultFile]) -> None:
        """Records a delivery and its files in one transaction; raises AlreadyDelivered."""
        with self._session() as s:
            s.add(
                DeliveryRow(
                    task_id=delivery.task_id, node=delivery.node.lower(), upload_id=delivery.upload_id,
                    task_type=delivery.task_type, score=delivery.score, salt=delivery.salt,
                    num_files=delivery.num_files, total_size=delivery.total_size,
                    created_at=delivery.created_at, attested=False, attest_failed=False,
                )
            )
            try:
                s.flush()
            except IntegrityError as exc:
                s.rollback()
                raise AlreadyDelivered(f"task {delivery.task_id} already has a delivery") from exc
            for f in files:
                s.add(
                    ResultFileRow(
                        task_id=delivery.task_id, idx=f.idx, name=f.name, content_type=f.content_type,
                        blob_key=f.blob_key, size=f.size, sha256=f.sha256,
                    )
                )
            try:
                s.commit()
            except IntegrityError as exc:
                s.rollback()
                raise AlreadyDelivered(f"task {delivery.task_id} already has a delivery") from exc

    def get_delivery(self, task_id: int) -> Delivery | None:
        with self._session() as s:
            row = s.get(DeliveryRow, task_id)
            return _delivery(row) if row else None

    def result_files(self, task_id: int) -> list[ResultFile]:
        with self._session() as s:
            rows = s.scalars(
                select(ResultFileRow).where(ResultFileRow.task_id == task_id).order_by(ResultFileRow.idx)
            )
            return [_file(r) for r in rows]

    def pending_attestations(self, limit: int = 100) -> list[Delivery]:
        with self._session() as s:
            rows = s.scalars(
                select(DeliveryRow)
                .where(DeliveryRow.attested.is_(False), DeliveryRow.attest_failed.is_(False))
                .order_by(DeliveryRow.created_at)
                .limit(limit)
            )
            return [_delivery(r) for r in rows]

    def mark_attested(self, task_id: int, tx_hash: str | None) -> None:
        with self._session() as s:
            s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.task_id == task_id)
                .values(attested=True, attest_failed=False, attest_tx=tx_hash, attest_error=None,
                        attested_at=time.time())
            )
            s.commit()

    def mark_attest_failed(self, task_id: int, error: str) -> None:
        with self._session() as s:
            s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.task_id == task_id)
                .values(attest_failed=True, attest_error=error[:2000])
            )
            s.commit()

    def note_attest_sent(self, task_id: int, tx_hash: str) -> None:
        """Records the attestation transaction the chain accepted (mined or not yet)."""
        with self._session() as s:
            s.execute(update(DeliveryRow).where(DeliveryRow.task_id == task_id).values(attest_tx=tx_hash))
            s.commit()

    def note_attest_error(self, task_id: int, error: str) -> None:
        """Remembers the last transient error of a still-pending attestation."""
        with self._session() as s:
            s.execute(update(DeliveryRow).where(DeliveryRow.task_id == task_id).values(attest_error=error[:2000]))
            s.commit()

    # --- replay protection -------------------------------------------------------------------

    def remember_request(self, key: str, expires_at: float, now: float | None = None) -> bool:
        """Records a signed request; False if the same request was seen and has not expired."""
        clock = time.time() if now is None else now
        self._since_purge += 1
        if self._since_purge >= self._purge_every:
            self._since_purge = 0
            self.purge_seen(clock)
        with self._session() as s:
            s.add(SeenRequestRow(key=key, expires_at=expires_at))
            try:
                s.commit()
                return True
            except IntegrityError:
                s.rollback()
            # Seen before: accept only if that entry has expired (then take it over).
            result = s.execute(
                update(SeenRequestRow)
                .where(SeenRequestRow.key == key, SeenRequestRow.expires_at < clock)
                .values(expires_at=expires_at)
            )
            s.commit()
            return bool(result.rowcount)

    def purge_seen(self, now: float | None = None) -> int:
        clock = time.time() if now is None else now
        with self._session() as s:
            result = s.execute(delete(SeenRequestRow).where(SeenRequestRow.expires_at < clock))
            s.commit()
            return int(result.rowcount or 0)

    # --- maintenance and statistics ------------------------------------------------------------

    def referenced_blob_keys(self) -> set[str]:
        with self._session() as s:
            keys = set(s.scalars(select(ArgsRow.blob_key)))
            keys.update(s.scalars(select(ResultFileRow.blob_key)))
            return keys

    def stats(self) -> StorageStats:
        with self._session() as s:
            args_count, args_bytes = s.execute(
                select(func.count(), func.coalesce(func.sum(ArgsRow.size), 0))
            ).one()
            deliveries = s.scalar(select(func.count()).select_from(DeliveryRow)) or 0
            attested = s.scalar(select(func.count()).where(DeliveryRow.attested.is_(True))) or 0
            failed = s.scalar(select(func.count()).where(DeliveryRow.attest_failed.is_(True))) or 0
            files, file_bytes = s.execute(
                select(func.count(), func.coalesce(func.sum(ResultFileRow.size), 0))
            ).one()
            return StorageStats(
                args_count=int(args_count), args_bytes=int(args_bytes), deliveries=int(deliveries),
                deliveries_attested=int(attested), deliveries_pending=int(deliveries - attested - failed),
                deliveries_failed=int(failed), result_files=int(files), result_bytes=int(file_bytes),
            )
