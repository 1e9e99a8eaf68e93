"""Operational failures of a real relay process (SQLite + files) on the real contracts:
a write-locked database, a blob folder that cannot be written, a relay account running out
of gas. Each must give clients a 503 with Retry-After and a JSON error (never a hang or a
plain-text 500), one log line, and a /health that names what is broken."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from eth_account import Account
from eth_utils import keccak

from crynux_common.enums import TaskStatus
from crynux_common.signing import sign_request

from .helpers import RelayProcess
from .network import Network, image_args
from .test_e2e import client, committed_image_task


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def start_relay(network: Network, root: Path, *extra: str) -> RelayProcess:
    proc = RelayProcess(rpc=network.rpc_url, deployment=network.write_deployment(root / "deployment.json"),
                        data=root / "data", key=network.relay_key, extra=list(extra))
    return proc.start()


@pytest.fixture
def relay(network: Network, tmp_path: Path) -> Iterator[RelayProcess]:
    proc = start_relay(network, tmp_path, "--db-lock-timeout", "2")
    yield proc
    proc.stop()


def put_args(relay: RelayProcess, network: Network, body: bytes) -> httpx.Response:
    target = "/v1/args/0x" + keccak(body).hex()
    headers = sign_request(network.local(network.creator), "PUT", target, body).as_dict()
    return httpx.put(relay.url + target, content=body, headers=headers, timeout=60)


def health(relay: RelayProcess) -> httpx.Response:
    return httpx.get(relay.url + "/health", timeout=30)


def assert_storage_503(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == "storage_unavailable"
    assert int(r.headers["Retry-After"]) > 0


def assert_no_traceback(relay: RelayProcess) -> None:
    log = relay.log()
    assert "Traceback" not in log, log[-3000:]


# --- item 4: storage failures ------------------------------------------------------------------


def test_writeLockedDatabase_answers503WithinTheLockTimeout_andHealthSaysDatabase(
        network: Network, relay: RelayProcess):
    assert health(relay).status_code == 200
    locker = sqlite3.connect(relay.data / "relay.sqlite3", isolation_level=None, timeout=10)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        r = put_args(relay, network, image_args(network.next_seed()))
        elapsed = time.monotonic() - started
        assert_storage_503(r)
        assert elapsed < 10, f"the request waited {elapsed:.1f} s for the lock"
        print(f"locked database: 503 after {elapsed:.2f} s (lock timeout 2 s)")
        h = health(relay)
        assert h.status_code == 503
        body = h.json()
        assert body["status"] == "unhealthy" and body["database"] is False
        assert body["blob_store"] is True and body["chain"] is True
        assert any(p.startswith("database:") for p in body["problems"])
    finally:
        locker.rollback()
        locker.close()
    assert health(relay).status_code == 200
    assert put_args(relay, network, image_args(network.next_seed())).status_code == 201
    log = relay.log()
    assert "answered 503" in log and "database is locked" in log
    assert_no_traceback(relay)


def test_blobFolderReplacedByAFile_answers503_andHealthSaysBlobStore(network: Network, relay: RelayProcess):
    blobs = relay.data / "blobs"
    away = relay.data / "blobs.away"
    blobs.rename(away)
    blobs.write_bytes(b"not a folder")  # stops root too, unlike chmod
    try:
        assert_storage_503(put_args(relay, network, image_args(network.next_seed())))
        h = health(relay)
        assert h.status_code == 503
        body = h.json()
        assert body["status"] == "unhealthy" and body["blob_store"] is False and body["database"] is True
        assert any(p.startswith("blob store") for p in body["problems"])
    finally:
        blobs.unlink()
        away.rename(blobs)
    assert health(relay).status_code == 200
    args = image_args(network.next_seed())
    assert put_args(relay, network, args).status_code == 201
    assert client(relay, network, network.creator).get_own_args(keccak(args)) == args
    assert "answered 503" in relay.log()
    assert_no_traceback(relay)


# --- item 7: the relay's gas -------------------------------------------------------------------


def rpc(method: str, params: list) -> Any:
    from ape import chain

    return chain.provider.web3.provider.make_request(method, params)


@pytest.fixture
def relay_address(network: Network) -> Iterator[str]:
    """The relay's account; its balance is put back after the test."""
    address = Account.from_key(network.relay_key).address
    before = int(rpc("eth_getBalance", [address, "latest"])["result"], 16)
    yield address
    rpc("anvil_setBalance", [address, hex(before)])


def test_attestations_lowerTheBalanceOnHealthAndMetrics(network: Network, relay: RelayProcess):
    first = health(relay).json()["funds"]
    assert first["balance_wei"] > 0 and first["attest_gas_measured"] is False
    assert first["attestations_covered"] == first["balance_wei"] // (first["attest_gas"] * first["gas_price_wei"])
    for _ in range(2):
        c = committed_image_task(network, relay, 1)
        out = client(relay, network, c.executor).upload_results(c.task_id, c.files, c.score, c.salt)
        assert out.attestation.state == "mined"
    after = health(relay).json()["funds"]
    assert after["balance_wei"] < first["balance_wei"]
    assert after["attest_gas_measured"] is True and 50_000 < after["attest_gas"] < 300_000
    print(f"attestDelivery gas measured: {after['attest_gas']}; balance {after['balance_eth']:.4f} ETH covers "
          f"{after['attestations_covered']} at {after['gas_price_wei'] / 1e9:.3f} gwei")
    metrics = httpx.get(relay.url + "/metrics", timeout=30).text
    assert "crynux_relay_balance_eth" in metrics and "crynux_relay_attestations_covered" in metrics


def test_drainedRelayAccount_warnsThenHealthFails_andAttestsOnceFunded(
        network: Network, tmp_path: Path, relay_address: str):
    relay = start_relay(network, tmp_path, "--gas-warn-attestations", "100", "--attest-wait", "2")
    try:
        funds = health(relay).json()["funds"]
        low = 5 * funds["attest_gas"] * funds["gas_price_wei"] + 1
        rpc("anvil_setBalance", [relay_address, hex(low)])
        h = health(relay)
        assert h.status_code == 200 and h.json()["status"] == "degraded"
        assert h.json()["funds"]["low"] is True and h.json()["funds"]["attestations_covered"] < 100
        wait_for("the low-gas warning", lambda: "low on gas" in relay.log(), 10)

        rpc("anvil_setBalance", [relay_address, "0x0"])
        h = health(relay)
        assert h.status_code == 503 and h.json()["status"] == "unhealthy"
        assert h.json()["funds"]["attestations_covered"] == 0
        assert any(p.startswith("gas:") for p in h.json()["problems"])

        c = committed_image_task(network, relay, 1)
        out = client(relay, network, c.executor).upload_results(c.task_id, c.files, c.score, c.salt)
        assert out.attestation.state == "pending" and "nsufficient funds" in (out.attestation.error or "")
        assert not network.task(c.task_id).delivered

        rpc("anvil_setBalance", [relay_address, hex(10**18)])
        wait_for("the worker's attestation", lambda: network.task(c.task_id).delivered, 60)
        assert network.task(c.task_id).status in (TaskStatus.SUCCESS, TaskStatus.AUDITING)
        assert health(relay).status_code == 200
        assert_no_traceback(relay)
    finally:
        relay.stop()


def test_unreachableChain_healthIs503AndSaysChain(network: Network, tmp_path: Path):
    from .helpers import free_port

    dead = RelayProcess(rpc=f"http://127.0.0.1:{free_port()}", key=network.relay_key, data=tmp_path / "data",
                        deployment=network.write_deployment(tmp_path / "deployment.json")).start()
    try:
        h = health(dead)
        assert h.status_code == 503
        body = h.json()
        assert body["status"] == "unhealthy" and body["chain"] is False and body["funds"] is None
        assert body["database"] is True and body["blob_store"] is True
        assert any(p.startswith("chain:") for p in body["problems"])
    finally:
        dead.stop()
