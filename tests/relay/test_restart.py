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
        for cycle in range(2):
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
            time.sleep(1.0 + 0.3 * cycle)
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
