"""`crynux-relay prune` against a relay process that keeps serving the same SQLite database and
blob folder, on the real contracts: old results and arguments go, recent ones and the
arguments of unfinished tasks stay, and clients see no error while it runs."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from eth_utils import keccak

from crynux_common.enums import TaskStatus
from relay_client.client import RelayClient
from relay_client.storage import LocalBlobStore, Repository

from .helpers import REPO_ROOT, RelayProcess
from .network import Network, image_args
from .test_e2e import Committed, client, committed_image_task

DAY = 86400.0


@pytest.fixture
def relay(network: Network, tmp_path: Path) -> Iterator[RelayProcess]:
    proc = RelayProcess(rpc=network.rpc_url, deployment=network.write_deployment(tmp_path / "deployment.json"),
                        data=tmp_path / "data", key=network.relay_key)
    proc.start()
    yield proc
    proc.stop()


def delivered(network: Network, relay: RelayProcess, **kw) -> Committed:  # type: ignore[no-untyped-def]
    c = committed_image_task(network, relay, 1, **kw)
    out = client(relay, network, c.executor).upload_results(c.task_id, c.files, c.score, c.salt)
    assert out.attestation.state == "mined"
    return c


def backdate(relay: RelayProcess, days: float, *, task_id: int | None = None, args: bytes | None = None,
             uploader: str | None = None) -> None:
    """Ages rows from another connection while the relay serves (as time would)."""
    then = time.time() - days * DAY
    db = sqlite3.connect(relay.data / "relay.sqlite3", timeout=30)
    with db:
        if task_id is not None:
            db.execute("UPDATE deliveries SET attested_at = ? WHERE task_id = ?", (then, task_id))
        if args is not None:
            db.execute("UPDATE args SET created_at = ? WHERE args_hash = ? AND uploader = ?",
                       (then, "0x" + keccak(args).hex(), (uploader or "").lower()))
    db.close()


def run_prune(network: Network, relay: RelayProcess, days: float) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "relay_client.cli", "prune", "--older-than", str(days), "--rpc", network.rpc_url,
         "--deployment", str(relay.deployment), "--data", str(relay.data),
         "--build-dir", str(REPO_ROOT / ".build")],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def rows(relay: RelayProcess) -> tuple[set[int], set[tuple[str, str]]]:
    db = sqlite3.connect(relay.data / "relay.sqlite3", timeout=30)
    try:
        deliveries = {r[0] for r in db.execute("SELECT task_id FROM deliveries")}
        args = {(r[0], r[1]) for r in db.execute("SELECT args_hash, uploader FROM args")}
        return deliveries, args
    finally:
        db.close()


def test_prune_removesOldKeepsRecentAndUnfinished_whileTheRelayServes(network: Network, relay: RelayProcess):
    creator = network.creator.address.lower()
    old = delivered(network, relay)  # SUCCESS, attested 40 days ago: results and arguments go
    recent = delivered(network, relay)  # attested now: all stays
    audited = delivered(network, relay, always_audit=True)  # AUDITING: not final, its arguments stay
    assert network.task(old.task_id).status == TaskStatus.SUCCESS
    assert network.task(audited.task_id).status == TaskStatus.AUDITING
    shared = image_args(network.next_seed())  # the same bytes from two uploaders: one row goes, the blob stays
    client(relay, network, network.creator).put_args(shared)
    client(relay, network, network.other_app).put_args(shared)
    for c in (old, audited):
        backdate(relay, 40, task_id=c.task_id, args=c.args, uploader=creator)
    backdate(relay, 40, args=shared, uploader=creator)
    old_bytes = sum(len(f.data) for f in old.files) + sum(len(f.data) for f in audited.files)

    # Clients keep using the relay while prune runs: uploads, downloads of kept results.
    stop = threading.Event()
    failures: list[str] = []
    served = [0]

    def traffic() -> None:
        app = RelayClient(relay.url, network.local(network.creator))
        while not stop.is_set():
            try:
                app.put_args(image_args(network.next_seed()))
                assert app.download_results(recent.task_id) == [f.data for f in recent.files]
                served[0] += 1
            except Exception as exc:  # noqa: BLE001 - any failure is the test's failure
                failures.append(repr(exc))
                return

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        out = run_prune(network, relay, 30)
    finally:
        time.sleep(0.5)  # let a request or two run after the prune as well
        stop.set()
        worker.join(60)
    print(out.strip(), f"| {served[0]} client rounds during the prune")
    assert not failures, failures
    assert served[0] > 0
    assert "removed 2 deliveries (2 files, " + str(old_bytes) + " bytes)" in out
    assert "2 argument uploads (1 blobs," in out
    assert "kept 1 argument uploads of unfinished tasks" in out

    deliveries, args = rows(relay)
    assert old.task_id not in deliveries and audited.task_id not in deliveries and recent.task_id in deliveries
    h = lambda data: "0x" + keccak(data).hex()  # noqa: E731
    assert (h(old.args), creator) not in args and (h(shared), creator) not in args
    assert (h(shared), network.other_app.address.lower()) in args
    assert (h(audited.args), creator) in args and (h(recent.args), creator) in args

    # Every remaining row has its blob and nothing unreferenced is left behind.
    repo = Repository.connect(f"sqlite:///{relay.data / 'relay.sqlite3'}")
    try:
        referenced = repo.referenced_blob_keys()
        on_disk = {b.key for b in LocalBlobStore(relay.data / "blobs").list() if not b.key.startswith("health/")}
        assert on_disk == referenced
    finally:
        repo.close()
    assert client(relay, network, network.other_app).get_own_args(keccak(shared)) == shared
    app = client(relay, network, network.creator)
    assert app.download_results(recent.task_id) == [f.data for f in recent.files]

    # Arguments pruned may be uploaded again (e.g. for a new task): stored and served again.
    again = client(relay, network, network.creator).put_args(old.args)
    assert again.created
    assert client(relay, network, network.creator).get_own_args(keccak(old.args)) == old.args

    # A second run finds nothing more to delete.
    assert "removed 0 deliveries (0 files, 0 bytes) and 0 argument uploads" in run_prune(network, relay, 30)


def test_pruneOfASharedArgsBlob_racingAnUpload_leavesTheBlobForTheNewRow(db_url: str, tmp_path: Path):
    """The arguments blob is shared by every uploader of the same bytes. Prune deletes it under
    the arguments write lock; an upload of the same bytes by someone else in that moment waits
    for the lock, then finds the blob gone and writes it again."""
    from relay_client.storage import Store

    repo = Repository.connect(db_url)
    store = Store(repo, LocalBlobStore(tmp_path / "blobs"))
    data = image_args(424242)
    args_hash = "0x" + keccak(data).hex()
    uploader_a, uploader_b = "0x" + "aa" * 20, "0x" + "bb" * 20
    store.save_args(args_hash, uploader_a, data)
    racer: list[threading.Thread] = []
    outcome: list[object] = []

    def drop(key: str) -> None:
        t = threading.Thread(target=lambda: outcome.append(store.save_args(args_hash, uploader_b, data)))
        t.start()
        racer.append(t)
        t.join(0.5)
        assert t.is_alive(), "the upload should wait for the prune's lock"
        store.blobs.delete(key)

    try:
        assert repo.delete_args(args_hash, uploader_a, time.time() + 1, drop)
        racer[0].join(30)
        assert outcome and outcome[0][1] is True  # type: ignore[index]
        assert repo.get_args(args_hash, uploader_a) is None
        assert store.load_args(repo.get_args(args_hash, uploader_b)) == data  # type: ignore[arg-type]
    finally:
        repo.close()
