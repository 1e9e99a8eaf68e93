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


# --- a deployed network and a relay process in front of it -----------------------------------

from .network import Network, deploy_network  # noqa: E402


@pytest.fixture
def _function_isolation():  # type: ignore[no-untyped-def]
    """No chain snapshot/revert around each test of this package: a relay process keeps state
    outside the chain, so the chain must not move back under it. Ape's module isolation still
    reverts everything a module did when it ends (each module deploys its own network)."""
    yield


@pytest.fixture(scope="module")
def network(project, accounts, owner, treasury, rpc_url) -> Network:  # type: ignore[no-untyped-def]
    """The whole network (scripts/_network.py) on the session's Anvil, ten joined nodes, two
    funded applications, the relay's account holding RELAY_ROLE; audit draws off (0 bps)."""
    for name in ("NodeRegistry", "TaskMarket", "NodeMining", "TaskMining"):
        if not hasattr(project, name):
            pytest.skip(f"the contract {name} is not in this tree yet")
    return deploy_network(project, accounts, owner, treasury, rpc_url)


@pytest.fixture(scope="module")
def relay_proc(network: Network, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A relay process (SQLite + files) serving the module's network."""
    from .helpers import RelayProcess

    root = tmp_path_factory.mktemp("relay")
    proc = RelayProcess(rpc=network.rpc_url, deployment=network.write_deployment(root / "deployment.json"),
                        data=root / "data", key=network.relay_key)
    proc.start()
    yield proc
    proc.stop()
