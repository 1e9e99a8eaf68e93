"""The node's crash-safe journal of its tasks (SQLite).

Everything the node must still know after a crash is written here *before* the action
that depends on it: the result files, the score, the salt and the commitment are stored
before the commit transaction is sent, so a restarted node can still deliver and disclose.
A small key/value table keeps the loop's own state (the last block scanned for events,
whether the loop itself paused the node at shutdown).

Public API:
    Role, Stage                     StrEnums
    JournalEntry                    one task as the node sees it (pydantic)
    Journal(path)
        .put / .get / .add_assigned / .advance / .update
        .open_entries() / .entries(limit) / .summary()
        .get_meta / .set_meta
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


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
    ABANDONED = "abandoned"  # this node could not compute it: no commit; watched until final
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
    #: Why the arguments were judged invalid (error score), or why the task was abandoned.
    note: str | None = None
    #: How the task ended for this node (set at DONE).
    outcome: str | None = None
    #: Seconds per phase (args, inference, commit, upload, disclose, ...) and engine counters.
    timings: dict[str, Any] = Field(default_factory=dict)
    #: Inference attempts that failed on this node (InferenceFailure or a dead engine).
    failures: int = 0
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


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
_META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
#: Columns added after the first version of the table (added in place on open).
_ADDED_COLUMNS = {
    "note": "TEXT",
    "outcome": "TEXT",
    "timings": "TEXT",
    "failures": "INTEGER NOT NULL DEFAULT 0",
    "created_at": "REAL NOT NULL DEFAULT 0",
    "updated_at": "REAL NOT NULL DEFAULT 0",
}
_FIELDS = tuple(JournalEntry.model_fields)


def _to_row(entry: JournalEntry) -> list[Any]:
    row = entry.model_dump()
    out: list[Any] = []
    for f in _FIELDS:
        v = row[f]
        if isinstance(v, StrEnum):
            v = v.value
        elif f == "timings":
            v = json.dumps(v, sort_keys=True)
        out.append(v)
    return out


def _from_row(row: tuple[Any, ...]) -> JournalEntry:
    data = dict(zip(_FIELDS, row, strict=True))
    data["timings"] = json.loads(data["timings"]) if data.get("timings") else {}
    data["failures"] = data.get("failures") or 0
    return JournalEntry(**data)


class Journal:
    """One row per task the node was assigned; every write is committed and fsynced."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute(_META_SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(tasks)")}
            for col, decl in _ADDED_COLUMNS.items():
                if col not in have:
                    db.execute(f"ALTER TABLE tasks ADD COLUMN {col} {decl}")

    @property
    def path(self) -> Path:
        return self._path

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=30)
        db.execute("PRAGMA synchronous=FULL")
        return db

    # --- tasks ----------------------------------------------------------------------------

    def put(self, entry: JournalEntry) -> None:
        """Insert or replace the task's row (durable when this returns)."""
        cols = ", ".join(_FIELDS)
        marks = ", ".join("?" for _ in _FIELDS)
        with closing(self._connect()) as db, db:
            db.execute(f"INSERT OR REPLACE INTO tasks ({cols}) VALUES ({marks})", _to_row(entry))

    def get(self, task_id: int) -> JournalEntry | None:
        with closing(self._connect()) as db:
            cur = db.execute(f"SELECT {', '.join(_FIELDS)} FROM tasks WHERE task_id = ?", (task_id,))
            row = cur.fetchone()
        return _from_row(row) if row else None

    def add_assigned(self, task_id: int, role: Role, task_type: int = 0) -> tuple[JournalEntry, bool]:
        """The task's entry, created at ASSIGNED if the journal did not know it (-> created?)."""
        existing = self.get(task_id)
        if existing is not None:
            return existing, False
        entry = JournalEntry(task_id=task_id, role=role, stage=Stage.ASSIGNED, task_type=task_type)
        self.put(entry)
        return entry, True

    def update(self, task_id: int, **fields: Any) -> JournalEntry:
        """Updates fields of the task without changing its stage."""
        entry = self.get(task_id)
        if entry is None:
            raise KeyError(f"task {task_id} is not in the journal")
        updated = entry.model_copy(update={**fields, "updated_at": time.time()})
        self.put(updated)
        return updated

    def advance(self, task_id: int, stage: Stage, **fields: Any) -> JournalEntry:
        """Moves a task to `stage`, updating the given fields; returns the new entry."""
        return self.update(task_id, stage=stage, **fields)

    def open_entries(self) -> list[JournalEntry]:
        """Tasks not yet DONE, oldest first: what a restarted node must resume or watch."""
        with closing(self._connect()) as db:
            cur = db.execute(
                f"SELECT {', '.join(_FIELDS)} FROM tasks WHERE stage != ? ORDER BY task_id",
                (Stage.DONE.value,),
            )
            rows = cur.fetchall()
        return [_from_row(r) for r in rows]

    def entries(self, limit: int | None = None) -> list[JournalEntry]:
        """Every task, newest first."""
        sql = f"SELECT {', '.join(_FIELDS)} FROM tasks ORDER BY task_id DESC"
        with closing(self._connect()) as db:
            rows = db.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
        return [_from_row(r) for r in rows]

    def summary(self) -> dict[str, int]:
        """Number of tasks per stage."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT stage, COUNT(*) FROM tasks GROUP BY stage").fetchall()
        return {str(stage): int(n) for stage, n in rows}

    # --- loop state -----------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def set_meta(self, key: str, value: str | None) -> None:
        with closing(self._connect()) as db, db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
