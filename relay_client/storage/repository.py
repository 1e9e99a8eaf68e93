"""The relay's database: one class, plain dataclasses in and out (no ORM objects leak)."""
from __future__ import annotations

import functools
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, ParamSpec, TypeVar

from sqlalchemy import create_engine, delete, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .models import ArgsRow, Base, DeliveryRow, MissingArgsRow, ResultFileRow, SeenRequestRow, TaskArgsRow

log = logging.getLogger(__name__)

#: How long a statement waits for a lock another connection holds before it gives up (the
#: relay then answers 503): long enough for a concurrent commit, short enough not to hang.
DEFAULT_LOCK_TIMEOUT_S = 5.0
#: The lock wait of the /health write probe.
PROBE_LOCK_TIMEOUT_S = 1.0

P = ParamSpec("P")
R = TypeVar("R")


class StorageError(Exception):
    """A database operation failed."""


class AlreadyDelivered(StorageError):
    """The task already has a delivery."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or written now (locked, read-only, disk full, server
    down): transient for the relay, which answers 503 until it is repaired."""


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split())[:300]


def _guard(method: Callable[P, R]) -> Callable[P, R]:
    """Turns driver errors (other than constraint violations) into StorageUnavailable."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise StorageUnavailable(f"database unavailable: {_one_line(exc)}") from exc

    return wrapper


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


def make_engine(url: str, *, echo: bool = False, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full sync, foreign keys and a busy timeout of
    ``lock_timeout_s``; PostgreSQL the same ``lock_timeout`` (a statement waiting longer for
    a lock fails, and the relay answers 503, instead of holding the request)."""
    ms = max(1, int(lock_timeout_s * 1000))
    if url.startswith("sqlite"):
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": lock_timeout_s}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={ms}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    connect_args = {"options": f"-c lock_timeout={ms}"} if url.startswith("postgresql") else {}
    return create_engine(url, echo=echo, pool_pre_ping=True, connect_args=connect_args)


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

    def __init__(self, engine: Engine, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.engine = engine
        self.lock_timeout_s = lock_timeout_s
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._purge_every = 256
        self._since_purge = 0

    @classmethod
    def connect(cls, url: str, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> "Repository":
        repo = cls(make_engine(url, lock_timeout_s=lock_timeout_s), lock_timeout_s=lock_timeout_s)
        repo.create_schema()
        return repo

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def _set_lock_timeout(self, s: Session, seconds: float) -> None:
        ms = max(1, int(seconds * 1000))
        if self.is_sqlite:
            s.connection().exec_driver_sql(f"PRAGMA busy_timeout={ms}")
        elif self.engine.dialect.name == "postgresql":
            s.connection().exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")

    @_guard
    def probe_writable(self, timeout_s: float = PROBE_LOCK_TIMEOUT_S) -> None:
        """Writes (and commits) a throwaway row, waiting at most ``timeout_s`` for a lock;
        raises StorageUnavailable when the database cannot take writes."""
        key = f"health-probe-{os.getpid()}"
        with self._session() as s:
            self._set_lock_timeout(s, timeout_s)
            try:
                s.execute(delete(SeenRequestRow).where(SeenRequestRow.key == key))
                s.add(SeenRequestRow(key=key, expires_at=time.time()))  # expired: purge_seen drops it
                s.commit()
            finally:
                if self.is_sqlite:  # a pooled connection keeps its pragma
                    s.rollback()
                    self._set_lock_timeout(s, self.lock_timeout_s)

    @_guard
    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _session(self) -> Session:
        return self._sessions()

    # --- arguments -------------------------------------------------------------------------

    @_guard
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

    @_guard
    def get_args(self, args_hash: str, uploader: str) -> ArgsRecord | None:
        with self._session() as s:
            row = s.get(ArgsRow, (args_hash.lower(), uploader.lower()))
            return _args(row) if row else None

    @_guard
    def mark_args_missing(self, task_id: int) -> None:
        """Records for good that the task's arguments never came (idempotent)."""
        with self._session() as s:
            s.add(MissingArgsRow(task_id=task_id, marked_at=time.time()))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()

    @_guard
    def args_missing(self, task_id: int) -> bool:
        with self._session() as s:
            return s.get(MissingArgsRow, task_id) is not None

    @_guard
    def args_uploaders(self, args_hash: str) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(ArgsRow.uploader).where(ArgsRow.args_hash == args_hash.lower())))

    # --- deliveries --------------------------------------------------------------------------

    @_guard
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

    @_guard
    def get_delivery(self, task_id: int) -> Delivery | None:
        with self._session() as s:
            row = s.get(DeliveryRow, task_id)
            return _delivery(row) if row else None

    @_guard
    def result_files(self, task_id: int) -> list[ResultFile]:
        with self._session() as s:
            rows = s.scalars(
                select(ResultFileRow).where(ResultFileRow.task_id == task_id).order_by(ResultFileRow.idx)
            )
            return [_file(r) for r in rows]

    @_guard
    def pending_attestations(self, limit: int = 100) -> list[Delivery]:
        with self._session() as s:
            rows = s.scalars(
                select(DeliveryRow)
                .where(DeliveryRow.attested.is_(False), DeliveryRow.attest_failed.is_(False))
                .order_by(DeliveryRow.created_at)
                .limit(limit)
            )
            return [_delivery(r) for r in rows]

    @_guard
    def mark_attested(self, task_id: int, tx_hash: str | None) -> None:
        with self._session() as s:
            s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.task_id == task_id)
                .values(attested=True, attest_failed=False, attest_tx=tx_hash, attest_error=None,
                        attested_at=time.time())
            )
            s.commit()

    @_guard
    def mark_attest_failed(self, task_id: int, error: str) -> None:
        with self._session() as s:
            s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.task_id == task_id)
                .values(attest_failed=True, attest_error=error[:2000])
            )
            s.commit()

    @_guard
    def note_attest_sent(self, task_id: int, tx_hash: str) -> None:
        """Records the attestation transaction the chain accepted (mined or not yet)."""
        with self._session() as s:
            s.execute(update(DeliveryRow).where(DeliveryRow.task_id == task_id).values(attest_tx=tx_hash))
            s.commit()

    @_guard
    def note_attest_error(self, task_id: int, error: str) -> None:
        """Remembers the last transient error of a still-pending attestation."""
        with self._session() as s:
            s.execute(update(DeliveryRow).where(DeliveryRow.task_id == task_id).values(attest_error=error[:2000]))
            s.commit()

    # --- replay protection -------------------------------------------------------------------

    @_guard
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

    @_guard
    def purge_seen(self, now: float | None = None) -> int:
        clock = time.time() if now is None else now
        with self._session() as s:
            result = s.execute(delete(SeenRequestRow).where(SeenRequestRow.expires_at < clock))
            s.commit()
            return int(result.rowcount or 0)

    # --- maintenance and statistics ------------------------------------------------------------

    @_guard
    def referenced_blob_keys(self) -> set[str]:
        with self._session() as s:
            keys = set(s.scalars(select(ArgsRow.blob_key)))
            keys.update(s.scalars(select(ResultFileRow.blob_key)))
            return keys

    @_guard
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

    # --- retention (crynux-relay prune) --------------------------------------------------------

    @_guard
    def touch_args(self, args_hash: str, uploader: str, now: float | None = None) -> bool:
        """Marks the arguments as used now (a re-upload, a download): ``created_at`` is the
        time of their last use, which retention counts from. False when the row is gone."""
        with self._session() as s:
            result = s.execute(
                update(ArgsRow)
                .where(ArgsRow.args_hash == args_hash.lower(), ArgsRow.uploader == uploader.lower())
                .values(created_at=time.time() if now is None else now)
            )
            s.commit()
            return bool(result.rowcount)

    @_guard
    def attested_before(self, cutoff: float, limit: int = 500) -> list[Delivery]:
        """Deliveries whose attestation was recorded before ``cutoff`` (unix seconds)."""
        with self._session() as s:
            rows = s.scalars(
                select(DeliveryRow)
                .where(DeliveryRow.attested.is_(True), DeliveryRow.attested_at < cutoff)
                .order_by(DeliveryRow.attested_at)
                .limit(limit)
            )
            return [_delivery(r) for r in rows]

    @_guard
    def delete_delivery(self, task_id: int, attested_before: float) -> list[ResultFile] | None:
        """Deletes the delivery and its file rows if it was attested before the cutoff (checked
        again in the deleting transaction); returns the files whose blobs to delete."""
        with self._session() as s:
            row = s.get(DeliveryRow, task_id)
            if row is None or not row.attested or row.attested_at is None or row.attested_at >= attested_before:
                return None
            files = [_file(r) for r in s.scalars(select(ResultFileRow).where(ResultFileRow.task_id == task_id))]
            s.execute(delete(ResultFileRow).where(ResultFileRow.task_id == task_id))
            s.execute(delete(DeliveryRow).where(DeliveryRow.task_id == task_id))
            s.commit()
            return files

    @_guard
    def tasks_to_check(self) -> list[int]:
        """Task ids the relay has seen (deliveries, missing-arguments marks) that are not known
        to be final yet."""
        with self._session() as s:
            seen = set(s.scalars(select(DeliveryRow.task_id)))
            seen.update(s.scalars(select(MissingArgsRow.task_id)))
            final = set(s.scalars(select(TaskArgsRow.task_id).where(TaskArgsRow.final.is_(True))))
            return sorted(seen - final)

    @_guard
    def record_task_args(self, task_id: int, args_hash: str, creator: str, final: bool) -> None:
        with self._session() as s:
            row = s.get(TaskArgsRow, task_id)
            if row is None:
                s.add(TaskArgsRow(task_id=task_id, args_hash=args_hash.lower(), creator=creator.lower(),
                                  final=final, checked_at=time.time()))
            else:
                row.final, row.checked_at = final, time.time()
            s.commit()

    @_guard
    def args_used_before(self, cutoff: float) -> list[ArgsRecord]:
        """Arguments last used (uploaded, renewed) before ``cutoff``."""
        with self._session() as s:
            rows = s.scalars(select(ArgsRow).where(ArgsRow.created_at < cutoff).order_by(ArgsRow.created_at))
            return [_args(r) for r in rows]

    @_guard
    def unfinished_tasks_using(self, args_hash: str, uploader: str) -> list[int]:
        """Known tasks of this creator with these arguments that are not final on-chain."""
        with self._session() as s:
            return list(s.scalars(select(TaskArgsRow.task_id).where(
                TaskArgsRow.args_hash == args_hash.lower(), TaskArgsRow.creator == uploader.lower(),
                TaskArgsRow.final.is_(False),
            )))

    @contextmanager
    def _args_write_lock(self) -> Iterator[Session]:
        """A transaction that keeps other connections from inserting arguments rows until it
        ends (SQLite: the database write lock; PostgreSQL: a table lock)."""
        with self._session() as s:
            if self.is_sqlite:
                # Any write statement takes SQLite's write lock for the rest of the transaction.
                s.execute(delete(SeenRequestRow).where(SeenRequestRow.key == "prune-lock"))
            else:
                s.connection().exec_driver_sql("LOCK TABLE args IN SHARE ROW EXCLUSIVE MODE")
            yield s

    @_guard
    def delete_args(self, args_hash: str, uploader: str, used_before: float,
                    drop_blob: Callable[[str], None]) -> bool:
        """Deletes the arguments row if it was last used before the cutoff (checked again under
        the lock); when no other row references its blob, calls ``drop_blob(key)`` before the
        lock is released. A concurrent upload of the same arguments waits for the lock and then
        finds the blob gone and writes it again (Store.save_args)."""
        with self._args_write_lock() as s:
            row = s.get(ArgsRow, (args_hash.lower(), uploader.lower()))
            if row is None or row.created_at >= used_before:
                s.rollback()
                return False
            key = row.blob_key
            s.delete(row)
            s.flush()
            if s.scalar(select(func.count()).where(ArgsRow.blob_key == key)) == 0:
                drop_blob(key)
            s.commit()
            return True

