"""Fixtures of the relay tests: database URLs (SQLite, and PostgreSQL when installed)."""
from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from .helpers import PostgresServer, postgres_bin


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (Debian package `postgresql`: initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
    root.chmod(0o755)  # the server may run as the `postgres` user
    server = PostgresServer(bindir, root / "cluster")
    try:
        server.start()
    except Exception as exc:  # e.g. no `postgres` user to run it as root
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL from {bindir}: {exc}")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database("t_" + uuid.uuid4().hex[:12])
