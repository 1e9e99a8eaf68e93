"""Restart safety: SIGKILL the relay process during uploads, restart it, check what it holds.

Everything the relay acknowledged must still be there after the restart, and nothing an
interrupted upload started may be left (no temp file, no unreferenced blob, no row whose
blob is missing or wrong).
"""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_utils import keccak

from crynux_common.schemas import canonical_json
from crynux_common.signing import sign_request
from relay_client.client import RelayClient
from relay_client.storage import LocalBlobStore, Repository

from .helpers import RelayProcess, write_deployment

pytestmark = pytest.mark.usefixtures("rpc_url")


def _args(i: int, size: int) -> bytes:
    pad = random.Random(i).randbytes(size // 2).hex()
    return canonical_json({"base_model": "base:tiny", "prompt": f"task {i}", "pad": pad})


def _uploader(url: str, account, start: int, acked: list, stop: threading.Event) -> None:
    client = RelayClient(url, account, timeout=10)
    i = start
    while not stop.is_set():
        data = _args(i, 200_000)
        try:
            out = client.put_args(data)
        except Exception:
            return  # the relay went down mid-request: this upload was not acknowledged
        assert out.created
        acked.append((account, data))
        i += 1


def _trickle(url: str, account, data: bytes) -> socket.socket:
    """Starts an upload and sends only half of the body."""
    target = "/v1/args/0x" + keccak(data).hex()
    headers = sign_request(account, "PUT", target, data).as_dict()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"PUT {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + data[: len(data) // 2])
    return sock


def _check_consistent(data_dir: Path) -> int:
    """Every row's blob exists with the right bytes; no temp file; no unreferenced blob."""
    repo = Repository.connect(f"sqlite:///{data_dir / 'relay.sqlite3'}")
    blobs = LocalBlobStore(data_dir / "blobs")
    try:
        assert list((data_dir / "blobs").rglob("*.part")) == []
        referenced = repo.referenced_blob_keys()
        on_disk = {b.key for b in blobs.list()}
        assert on_disk == referenced
        with repo.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT args_hash, blob_key, size FROM args").all()
        for args_hash, key, size in rows:
            data = blobs.get_bytes(key)
            assert len(data) == size and "0x" + keccak(data).hex() == args_hash
        return len(rows)
    finally:
        repo.close()


def test_sigkillDuringArgUploads_keepsAcknowledgedAndLeavesNoPartialUploads(tmp_path: Path, rpc_url: str):
    deployment = write_deployment(tmp_path / "deployment.json", "0x" + "00" * 19 + "01", abi=MINIMAL_MARKET_ABI)
    relay = RelayProcess(rpc=rpc_url, deployment=deployment, data=tmp_path / "data")
    accounts = [Account.create() for _ in range(3)]
    acked: list = []
    half_sent = []
    try:
        for cycle in range(1):
            relay.start()
            stop = threading.Event()
            threads = [
                threading.Thread(target=_uploader, args=(relay.url, a, 1000 * cycle + 100 * k, acked, stop))
                for k, a in enumerate(accounts)
            ]
            for t in threads:
                t.start()
            trickle_data = _args(10_000 + cycle, 150_000)
            sock = _trickle(relay.url, accounts[0], trickle_data)
            half_sent.append((accounts[0], trickle_data))
            deadline = time.time() + 60
            while len(acked) < 15 and time.time() < deadline:  # kill once uploads are flowing
                time.sleep(0.01)
            relay.kill()
            stop.set()
            for t in threads:
                t.join(15)
            sock.close()
        print("acked", len(acked))
        assert len(acked) > 10, "the uploaders should have been acknowledged many times before the kills"

        relay.start()  # recovery runs before it serves
        rows = _check_consistent(relay.data)
        assert rows >= len(acked)
        for account, data in acked:
            client = RelayClient(relay.url, account)
            assert client.get_own_args(keccak(data)) == data
        for account, data in half_sent:
            r = httpx.get(
                relay.url + f"/v1/args/0x{keccak(data).hex()}",
                headers=sign_request(account, "GET", f"/v1/args/0x{keccak(data).hex()}").as_dict(),
            )
            assert r.status_code == 404
    finally:
        relay.stop()


# A market ABI with the three functions the relay calls; the arguments path never reaches the chain.
MINIMAL_MARKET_ABI = json.loads(
    """[
 {"type":"function","name":"getTask","stateMutability":"view","inputs":[{"name":"taskId","type":"uint256"}],
  "outputs":[{"name":"","type":"tuple","components":[{"name":"creator","type":"address"},
   {"name":"argsHash","type":"bytes32"},{"name":"executor","type":"address"},
   {"name":"auditors","type":"address[2]"},{"name":"delivered","type":"bool"}]}]},
 {"type":"function","name":"commitmentOf","stateMutability":"view",
  "inputs":[{"name":"taskId","type":"uint256"},{"name":"node","type":"address"}],
  "outputs":[{"name":"","type":"bytes32"}]},
 {"type":"function","name":"attestDelivery","stateMutability":"nonpayable",
  "inputs":[{"name":"taskId","type":"uint256"}],"outputs":[]}
]"""
)


def _check_deliveries_consistent(data_dir: Path, *, recovered: bool) -> dict[int, list[str]]:
    """Every delivery's files exist with their SHA-256; returns task id -> file hashes.

    Right after a kill an upload may have left temp files and blobs whose row was never
    committed; once the relay has restarted (``recovered``) none may be left.
    """
    import hashlib

    repo = Repository.connect(f"sqlite:///{data_dir / 'relay.sqlite3'}")
    blobs = LocalBlobStore(data_dir / "blobs")
    try:
        referenced = repo.referenced_blob_keys()
        on_disk = {b.key for b in blobs.list()}
        assert referenced <= on_disk
        if recovered:
            assert list((data_dir / "blobs").rglob("*.part")) == []
            assert on_disk == referenced
        out: dict[int, list[str]] = {}
        with repo.engine.connect() as conn:
            task_ids = [r[0] for r in conn.exec_driver_sql("SELECT task_id FROM deliveries").all()]
        for task_id in task_ids:
            files = repo.result_files(task_id)
            delivery = repo.get_delivery(task_id)
            assert delivery is not None and delivery.num_files == len(files)
            for f in files:
                assert hashlib.sha256(blobs.get_bytes(f.blob_key)).hexdigest() == f.sha256
            out[task_id] = [f.sha256 for f in files]
        return out
    finally:
        repo.close()


def test_sigkillDuringResultUploads_keepsAcknowledgedAndAttestsAfterRestart(network, tmp_path: Path):
    """Big result uploads in flight when the relay dies: what it acknowledged survives (and
    is attested on-chain, by the restarted relay if need be); the rest is absent, not partial,
    and the executor's retry succeeds."""
    import hashlib

    from crynux_common import scores
    from relay_client.client import RelayClient, RelayConflict, ResultUpload, encode_multipart

    from .network import image_args, noise_png

    relay = RelayProcess(rpc=network.rpc_url, deployment=network.write_deployment(tmp_path / "d.json"),
                         data=tmp_path / "data", key=network.relay_key).start()
    deliveries = []
    try:
        creator = RelayClient(relay.url, network.local(network.creator))
        for _ in range(6):
            seed = network.next_seed()
            args = image_args(seed, 2, size=896)  # the relay takes images of the size asked for
            creator.put_args(args)
            task_id = network.create_task(args, num_images=2)
            executor = network.executor(task_id)
            files = [ResultUpload(f"{i}.png", noise_png(seed * 10 + i, 896, 896)) for i in range(2)]
            score, salt = scores.image_score([f.data for f in files]), scores.new_salt()
            network.commit(task_id, executor, score, salt)
            deliveries.append((task_id, executor, files, score, salt))

        acked: dict[int, list[str]] = {}

        def upload(d) -> None:
            task_id, executor, files, score, salt = d
            try:
                out = RelayClient(relay.url, network.local(executor), timeout=60).upload_results(
                    task_id, files, score, salt)
            except Exception:
                return
            acked[task_id] = [f.sha256 for f in out.files]

        # The first delivery is sent only half-way (its bytes are in the relay when it dies).
        task_id, executor, files, score, salt = deliveries[0]
        body, ctype = encode_multipart({"score": "0x" + score.hex(), "salt": "0x" + salt.hex()}, files)
        target = f"/v1/tasks/{task_id}/results"
        head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in sign_request(network.local(executor), "POST", target, body)
                          .as_dict().items()) + "\r\n")
        half = socket.create_connection(("127.0.0.1", relay.port))
        half.sendall(head.encode() + body[: len(body) // 2])

        threads = [threading.Thread(target=upload, args=(d,)) for d in deliveries[1:]]
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while not acked and time.time() < deadline:
            time.sleep(0.01)
        relay.kill()  # right after the first acknowledgement: others are mid-way
        for t in threads:
            t.join(30)
        half.close()
        assert acked, "no upload was acknowledged before the kill"

        stored = _check_deliveries_consistent(relay.data, recovered=False)
        assert deliveries[0][0] not in stored
        for task_id, hashes in acked.items():
            assert stored[task_id] == hashes

        relay.start()
        assert _check_deliveries_consistent(relay.data, recovered=True) == stored
        for task_id, executor, files, score, salt in deliveries:
            node = RelayClient(relay.url, network.local(executor))
            if task_id not in stored:
                out = node.upload_results(task_id, files, score, salt)  # the executor retries
                assert out.attestation.state == "mined"
            else:
                with pytest.raises(RelayConflict):
                    node.upload_results(task_id, files, score, salt)
        # Deliveries stored before the kill but not yet attested are attested by the worker.
        deadline = time.time() + 30
        while time.time() < deadline and not all(network.task(d[0]).delivered for d in deliveries):
            time.sleep(0.5)
        assert all(network.task(d[0]).delivered for d in deliveries)
        for task_id, _executor, files, _score, _salt in deliveries:
            got = creator.download_results(task_id)
            assert [hashlib.sha256(g).hexdigest() for g in got] == [hashlib.sha256(f.data).hexdigest() for f in files]
        _check_deliveries_consistent(relay.data, recovered=True)
    finally:
        relay.stop()
