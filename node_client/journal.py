"""The node's crash-safe journal of its tasks (SQLite).

Everything the node must still know after a crash is written here *before* the action
that depends on it: the salt and the commitment are stored before the commit
transaction is sent, so a restarted node can still deliver and disclose.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel


class Role(StrEnum):
    EXECUTOR = "executor"
    AUDITOR = "auditor"


class Stage(StrEnum):
    """How far the node got with a task; each stage is recorded when reached."""

    ASSIGNED = "assigned"  # seen on-chain, nothing done yet
    COMPUTED = "computed"  # result files, score and salt on disk, commit not sent yet
    COMMITTED = "committed"  # commit transaction mined
    DELIVERED = "delivered"  # the relay accepted the result (executor only)
    DISCLOSED = "disclosed"  # disclose transaction mined
    DONE = "done"  # nothing more to do for this task


class JournalEntry(BaseModel):
    task_id: int
    role: Role
    stage: Stage
    task_type: int = 0
    score: bytes | None = None
    salt: bytes | None = None
    commitment: bytes | None = None
    result_dir: str | None = None
    error: str | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id INTEGER PRIMARY KEY,
    role TEXT NOT NULL,
    stage TEXT NOT NULL,
    task_type INTEGER NOT NULL DEFAULT 0,
    score BLOB,
    salt BLOB,
    commitment BLOB,
    result_dir TEXT,
    error TEXT
)
"""
_FIELDS = tuple(JournalEntry.model_fields)


class Journal:
    """One row per task the node was assigned; every write is committed and fsynced."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=30)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def put(self, entry: JournalEntry) -> None:
        """Insert or replace the task's row (durable when this returns)."""
        row = entry.model_dump()
        cols = ", ".join(_FIELDS)
        marks = ", ".join("?" for _ in _FIELDS)
        with closing(self._connect()) as db, db:
            db.execute(
                f"INSERT OR REPLACE INTO tasks ({cols}) VALUES ({marks})",
                [row[f].value if isinstance(row[f], StrEnum) else row[f] for f in _FIELDS],
            )

    def get(self, task_id: int) -> JournalEntry | None:
        with closing(self._connect()) as db:
            cur = db.execute(f"SELECT {', '.join(_FIELDS)} FROM tasks WHERE task_id = ?", (task_id,))
            row = cur.fetchone()
        return JournalEntry(**dict(zip(_FIELDS, row))) if row else None

    def advance(self, task_id: int, stage: Stage, **fields: object) -> JournalEntry:
        """Moves a task to `stage`, updating the given fields; returns the new entry."""
        entry = self.get(task_id)
        if entry is None:
            raise KeyError(f"task {task_id} is not in the journal")
        updated = entry.model_copy(update={"stage": stage, **fields})
        self.put(updated)
        return updated

    def open_entries(self) -> list[JournalEntry]:
        """Tasks not yet DONE, oldest first: what a restarted node must resume."""
        with closing(self._connect()) as db:
            cur = db.execute(
                f"SELECT {', '.join(_FIELDS)} FROM tasks WHERE stage != ? ORDER BY task_id",
                (Stage.DONE.value,),
            )
            rows = cur.fetchall()
        return [JournalEntry(**dict(zip(_FIELDS, r))) for r in rows]
