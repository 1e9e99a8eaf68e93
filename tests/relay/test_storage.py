"""relay_client.storage: the repository on SQLite and PostgreSQL, blob stores, recovery."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from relay_client.storage import (
    AlreadyDelivered,
    BlobNotFound,
    IncomingFile,
    LocalBlobStore,
    Repository,
    S3BlobStore,
    Store,
)
from relay_client.storage.store import args_key, sha256_file

NODE = "0x" + "ab" * 20
CREATOR = "0x" + "cd" * 20


@pytest.fixture
def repo(db_url: str):
    r = Repository.connect(db_url)
    yield r
    r.close()


@pytest.fixture
def store(repo: Repository, tmp_path: Path) -> Store:
    return Store(repo, LocalBlobStore(tmp_path / "blobs"))


def _incoming(data: bytes, name: str = "0.png") -> IncomingFile:
    f = io.BytesIO(data)
    digest, size = sha256_file(f)
    return IncomingFile(name=name, content_type="image/png", file=f, size=size, sha256=digest)


def test_sqlite_usesWriteAheadLog(tmp_path: Path):
    repo = Repository.connect(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    with repo.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_putArgs_isIdempotentPerUploader(repo: Repository):
    h = "0x" + "11" * 32
    assert repo.put_args(h, CREATOR, "args/x", 10) is True
    assert repo.put_args(h, CREATOR, "args/x", 10) is False
    assert repo.put_args(h.upper().replace("0X", "0x"), NODE, "args/x", 10) is True
    assert sorted(repo.args_uploaders(h)) == sorted([CREATOR, NODE])
    rec = repo.get_args(h, CREATOR.upper().replace("0X", "0x"))
    assert rec is not None and rec.size == 10 and rec.uploader == CREATOR
    assert repo.get_args("0x" + "22" * 32, CREATOR) is None


def test_saveArgs_storesBytesOnceForTwoUploaders(store: Store):
    h = "0x" + "33" * 32
    rec, created = store.save_args(h, CREATOR, b'{"a":1}')
    assert created and store.load_args(rec) == b'{"a":1}'
    rec2, created2 = store.save_args(h, NODE, b'{"a":1}')
    assert created2 and rec2.blob_key == rec.blob_key == args_key(h)
    _, again = store.save_args(h, CREATOR, b'{"a":1}')
    assert again is False
    assert [b.key for b in store.blobs.list("args/")] == [args_key(h)]


def test_saveDelivery_storesFilesAndRow(store: Store):
    d = store.save_delivery(task_id=7, node=NODE, task_type=0, score=b"\x01" * 8, salt=b"\x02" * 32,
                            files=[_incoming(b"png-a", "a.png"), _incoming(b"png-bb", "b.png")])
    assert d.score == "0x" + "01" * 8 and d.total_size == 11 and d.num_files == 2
    got = store.repo.get_delivery(7)
    assert got is not None and got.node == NODE and not got.attested
    files = store.repo.result_files(7)
    assert [f.name for f in files] == ["a.png", "b.png"]
    assert b"".join(store.result_chunks(files[1])) == b"png-bb"
    assert [p.task_id for p in store.repo.pending_attestations()] == [7]


def test_saveDelivery_failsIfAlreadyDeliveredAndLeavesNoBlobs(store: Store):
    store.save_delivery(task_id=8, node=NODE, task_type=0, score=b"", salt=b"\x00" * 32, files=[_incoming(b"x")])
    before = sorted(b.key for b in store.blobs.list())
    with pytest.raises(AlreadyDelivered):
        store.save_delivery(task_id=8, node=NODE, task_type=0, score=b"", salt=b"\x00" * 32, files=[_incoming(b"y")])
    assert sorted(b.key for b in store.blobs.list()) == before


def test_putDelivery_raceLeavesOneDelivery(store: Store):
    """Two uploads that both pass the pre-check: the row insert decides, the loser's blobs go."""
    repo = store.repo
    original = repo.get_delivery
    repo.get_delivery = lambda task_id: None  # type: ignore[method-assign]  # both pass the pre-check
    try:
        store.save_delivery(task_id=9, node=NODE, task_type=0, score=b"", salt=b"\x00" * 32, files=[_incoming(b"1")])
        with pytest.raises(AlreadyDelivered):
            store.save_delivery(task_id=9, node=NODE, task_type=0, score=b"", salt=b"\x00" * 32,
                                files=[_incoming(b"2")])
    finally:
        repo.get_delivery = original  # type: ignore[method-assign]
    files = repo.result_files(9)
    assert len(files) == 1 and b"".join(store.result_chunks(files[0])) == b"1"
    assert len(list(store.blobs.list("results/"))) == 1


def test_attestationMarks(store: Store):
    for t in (1, 2, 3):
        store.save_delivery(task_id=t, node=NODE, task_type=1, score=b"\x05" * 32, salt=b"\x00" * 32, files=[])
    store.repo.mark_attested(1, "0x" + "aa" * 32)
    store.repo.mark_attest_failed(2, "reverted")
    store.repo.note_attest_error(3, "rpc down")
    assert [d.task_id for d in store.repo.pending_attestations()] == [3]
    one = store.repo.get_delivery(1)
    assert one is not None and one.attested and one.attest_tx == "0x" + "aa" * 32 and one.attested_at
    st = store.repo.stats()
    assert (st.deliveries, st.deliveries_attested, st.deliveries_failed, st.deliveries_pending) == (3, 1, 1, 1)


def test_rememberRequest_rejectsReplayUntilExpiry(repo: Repository):
    now = 1000.0
    assert repo.remember_request("k1", expires_at=now + 61, now=now) is True
    assert repo.remember_request("k1", expires_at=now + 61, now=now + 30) is False
    # After the window the key may be used again (its signature would be expired anyway).
    assert repo.remember_request("k1", expires_at=now + 200, now=now + 62) is True
    assert repo.remember_request("k1", expires_at=now + 200, now=now + 63) is False
    assert repo.purge_seen(now + 201) == 1


def test_rememberRequest_survivesReconnect(db_url: str):
    first = Repository.connect(db_url)
    assert first.remember_request("persist", time.time() + 60)
    first.close()
    second = Repository.connect(db_url)
    assert second.remember_request("persist", time.time() + 60) is False
    second.close()


def test_recover_removesTempFilesAndUnreferencedBlobs(store: Store, tmp_path: Path):
    h = "0x" + "44" * 32
    store.save_args(h, CREATOR, b"{}")
    store.save_delivery(task_id=1, node=NODE, task_type=0, score=b"", salt=b"\x00" * 32, files=[_incoming(b"keep")])
    root = tmp_path / "blobs"
    # What a crash leaves: a temp file mid-write and blobs whose row was never committed.
    (root / "results" / "2" / "u1").mkdir(parents=True)
    (root / "results" / "2" / "u1" / ".0.abc.part").write_bytes(b"half")
    (root / "results" / "2" / "u1" / "0").write_bytes(b"orphan")
    (root / "args" / ("55" * 32)).write_bytes(b"{}")
    report = store.recover()
    assert (report.temp_files_removed, report.orphans_removed) == (1, 2)
    assert not (root / "results" / "2").exists()
    keys = sorted(b.key for b in store.blobs.list())
    assert keys == sorted([args_key(h)] + [f.blob_key for f in store.repo.result_files(1)])


def test_recover_keepsYoungOrphansWithinGrace(store: Store, tmp_path: Path):
    store.blobs.put_bytes("results/5/u/0", b"in flight elsewhere")
    assert store.recover(grace_seconds=3600).orphans_removed == 0
    old = time.time() - 7200
    os.utime(tmp_path / "blobs" / "results" / "5" / "u" / "0", (old, old))
    assert store.recover(grace_seconds=3600).orphans_removed == 1


def test_localBlobStore_atomicWriteLeavesNothingOnError(tmp_path: Path):
    blobs = LocalBlobStore(tmp_path)

    class Boom(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            raise OSError("disk went away")

    with pytest.raises(OSError):
        blobs.put_file("results/1/u/0", Boom())  # type: ignore[arg-type]
    assert list(tmp_path.rglob("*.part")) == [] and not blobs.exists("results/1/u/0")
    with pytest.raises(BlobNotFound):
        blobs.get_bytes("results/1/u/0")


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", ".hidden", "a/.part", "x.part", ""])
def test_blobKeys_areValidated(tmp_path: Path, key: str):
    with pytest.raises(ValueError):
        LocalBlobStore(tmp_path).put_bytes(key, b"x")


def test_s3BlobStore_roundTripAndRecovery(repo: Repository):
    moto = pytest.importorskip("moto", reason="moto (an in-process S3 implementation) is not installed")
    with moto.mock_aws():
        blobs = S3BlobStore("relay-test", prefix="r1", region="us-east-1", access_key="k", secret_key="s",
                            create_bucket=True)
        store = Store(repo, blobs)
        rec, _ = store.save_args("0x" + "66" * 32, CREATOR, b'{"p":1}')
        assert store.load_args(rec) == b'{"p":1}'
        store.save_delivery(task_id=3, node=NODE, task_type=0, score=b"", salt=b"\x00" * 32,
                            files=[_incoming(b"A" * 3_000_000)])
        f = store.repo.result_files(3)[0]
        assert b"".join(store.result_chunks(f)) == b"A" * 3_000_000
        blobs.put_bytes("results/4/u/0", b"orphan")
        assert store.recover().orphans_removed == 1
        assert sorted(b.key for b in blobs.list()) == sorted([rec.blob_key, f.blob_key])
        assert not blobs.exists("results/4/u/0")
