"""Hostile clients against a real relay process: what they send is refused from the request
head (before the body is read), at a bounded cost, and legitimate signers keep being served.

Items of the transport issue: (2) bodies read before signatures, slow bodies, uploads per
signer, the global body budget; (3) /metrics labels from raw methods and paths; (4) a
timestamp of hundreds of digits; (6) rate limits per client IP and per signer.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from eth_account import Account
from eth_utils import keccak

from crynux_common.signing import (
    HEADER_TIMESTAMP,
    MalformedSignature,
    body_sha256,
    sign_request,
    verify_request,
)
from relay_client.client import RelayClient
from relay_client.server.ratelimit import TokenBuckets

from .helpers import REPO_ROOT, RelayProcess
from .network import Network

KiB = 1024
MiB = 1024 * KiB


# --- harness -----------------------------------------------------------------------------------


@dataclass
class Relay:
    proc: RelayProcess
    tmpdir: Path  # the relay's TMPDIR: where spooled bodies would go

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def port(self) -> int:
        return self.proc.port

    def rss(self) -> int:
        """Resident set size of the relay process, bytes."""
        assert self.proc.proc is not None
        for line in Path(f"/proc/{self.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
        raise RuntimeError("no VmRSS")

    def temp_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.tmpdir.rglob("*") if p.is_file())


@pytest.fixture
def start_relay(network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Relay]]:
    """Starts relay processes with extra command-line flags (each its own TMPDIR and data)."""
    started: list[RelayProcess] = []

    def start(*flags: str) -> Relay:
        n = len(started)
        tmp = tmp_path / f"tmp{n}"
        tmp.mkdir()
        monkeypatch.setenv("TMPDIR", str(tmp))  # inherited by the relay process
        root = tmp_path / f"relay{n}"
        root.mkdir()
        proc = RelayProcess(rpc=network.rpc_url, deployment=network.write_deployment(root / "deployment.json"),
                            data=root / "data", key=network.relay_key, extra=list(flags))
        started.append(proc)
        proc.start()
        return Relay(proc, tmp)

    yield start
    for proc in started:
        proc.stop()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawConn:
    """One HTTP/1.1 connection driven by hand (a head now, a body later, or never)."""

    port: int
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def send_head(self, method: str, target: str, headers: dict[str, str], content_length: int | None) -> None:
        lines = [f"{method} {target} HTTP/1.1", "Host: relay"]
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def response(self, timeout: float = 30.0) -> RawResponse:
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a response: {data!r}")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return RawResponse(int(lines[0].split(" ", 2)[1]), headers, body)

    def is_closed_by_peer(self, timeout: float = 10.0) -> bool:
        """True when the relay closed the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def push(self, total: int, chunk: int = MiB) -> int:
        """Sends up to ``total`` bytes of body; returns how many went out before the relay
        closed the connection."""
        sent = 0
        block = b"\0" * chunk
        self.sock.settimeout(10)
        try:
            while sent < total:
                sent += self.sock.send(block[: min(chunk, total - sent)])
        except OSError:
            pass
        return sent

    def close(self) -> None:
        self.sock.close()


def signed_headers(account: Any, method: str, target: str, body: bytes = b"", **kw: Any) -> dict[str, str]:
    return sign_request(account, method, target, body, **kw).as_dict()


def args_body(seed: int, pad: int = 0) -> tuple[bytes, str]:
    body = json.dumps({"prompt": f"hostile {seed}", "pad": "x" * pad}).encode()
    return body, "/v1/args/0x" + keccak(body).hex()


class Sampler:
    """Samples the relay's RSS and temp-file bytes in a thread; keeps the maxima."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.max_rss = relay.rss()
        self.max_temp = relay.temp_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.max_rss = max(self.max_rss, self.relay.rss())
            self.max_temp = max(self.max_temp, self.relay.temp_bytes())

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def gauge(relay: Relay, name: str) -> float:
    for line in httpx.get(relay.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# --- item 2: bodies are not read before the signature headers are checked ------------------


HEAD_VARIANTS = {
    "no signature headers": (lambda acct, target: {}, "missing_signature"),
    "expired timestamp": (lambda acct, target: signed_headers(acct, "POST", target, timestamp=int(time.time()) - 3600),
                          "expired_timestamp"),
    "timestamp of 400 digits": (lambda acct, target: {**signed_headers(acct, "POST", target),
                                                       HEADER_TIMESTAMP: "9" * 400}, "malformed_signature"),
}


@pytest.mark.parametrize("variant", list(HEAD_VARIANTS))
def test_threeUnsigned200MiBPosts_refusedBeforeTheBodyIsRead(start_relay, variant: str):
    """Three 200 MiB POSTs without valid signature headers: 401 at once, the relay closes the
    connections, nothing is spooled and its memory does not grow."""
    relay = start_relay()
    make_headers, code = HEAD_VARIANTS[variant]
    target = "/v1/tasks/1/results"
    rss_before = relay.rss()

    def one(_: int) -> tuple[RawResponse, float, int, bool]:
        conn = RawConn(relay.port)
        try:
            headers = {**make_headers(Account.create(), target),
                       "Content-Type": "multipart/form-data; boundary=b"}
            t0 = time.perf_counter()
            conn.send_head("POST", target, headers, 200 * MiB)
            response = conn.response(timeout=10)
            elapsed = time.perf_counter() - t0
            pushed = conn.push(200 * MiB)
            return response, elapsed, pushed, conn.is_closed_by_peer()
        finally:
            conn.close()

    with Sampler(relay) as sampler, ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, range(3)))
    for response, elapsed, pushed, closed in results:
        assert response.status == 401 and response.json()["error"] == code, response
        assert response.headers.get("connection") == "close"
        assert elapsed < 5.0, f"the 401 took {elapsed:.1f} s"
        assert pushed < 64 * MiB, f"the relay took {pushed / MiB:.0f} MiB of a body it refused"
        assert closed
    assert sampler.max_temp < 64 * KiB, f"{sampler.max_temp} bytes spooled to the relay's TMPDIR"
    assert sampler.max_rss - rss_before < 32 * MiB, f"RSS grew {(sampler.max_rss - rss_before) / MiB:.0f} MiB"
    assert "Traceback" not in relay.proc.log()


def test_declaredLengthOverTheRouteLimit_is413BeforeTheBody(start_relay):
    relay = start_relay()
    body, target = args_body(1)
    conn = RawConn(relay.port)
    try:
        conn.send_head("PUT", target, signed_headers(Account.create(), "PUT", target, body), 300 * KiB)
        response = conn.response(timeout=10)
        assert response.status == 413 and response.json()["error"] == "too_large"
        assert conn.is_closed_by_peer()
    finally:
        conn.close()


def test_slowBody_oneByteEvery3s_is408AfterTheGrace(start_relay):
    """Slowloris: a body trickling at 1 byte / 3 s is cut off once the grace (2 s here) is over,
    with one log line; a body that keeps the minimum rate is stored."""
    relay = start_relay("--body-grace", "2", "--body-min-rate", "1024")
    acct = Account.create()
    body, target = args_body(2, pad=100)
    conn = RawConn(relay.port)
    stop = threading.Event()

    def trickle() -> None:
        for i in range(len(body)):
            if stop.is_set():
                return
            try:
                conn.sock.sendall(body[i:i + 1])
            except OSError:
                return
            stop.wait(3.0)

    sender = threading.Thread(target=trickle, daemon=True)
    try:
        conn.send_head("PUT", target, signed_headers(acct, "PUT", target, body), len(body))
        t0 = time.perf_counter()
        sender.start()
        response = conn.response(timeout=20)
        elapsed = time.perf_counter() - t0
        assert response.status == 408 and response.json()["error"] == "body_timeout", response
        assert 1.5 < elapsed < 8.0, f"cut off after {elapsed:.1f} s"
        assert conn.is_closed_by_peer()
    finally:
        stop.set()
        conn.close()
        sender.join()
    log = relay.proc.log()
    assert log.count("closing a slow upload") == 1 and "Traceback" not in log, log

    # 1.25 KiB/s, above the minimum rate: the upload goes through although it takes > 2 s.
    body, target = args_body(3, pad=3 * KiB)
    conn = RawConn(relay.port)
    try:
        conn.send_head("PUT", target, signed_headers(acct, "PUT", target, body), len(body))
        for i in range(0, len(body), 256):
            conn.sock.sendall(body[i:i + 256])
            time.sleep(0.2)
        assert conn.response(timeout=20).status == 201
    finally:
        conn.close()


def test_uploadsPerSigner_overTheCapIs429_otherSignersServed(start_relay):
    relay = start_relay("--max-uploads-per-signer", "1")
    busy, other = Account.create(), Account.create()
    held_body, held_target = args_body(4, pad=1000)
    held = RawConn(relay.port)
    try:
        held.send_head("PUT", held_target, signed_headers(busy, "PUT", held_target, held_body), len(held_body))
        held.sock.sendall(held_body[:10])
        assert wait_until(lambda: gauge(relay, "crynux_relay_body_bytes_in_flight") == len(held_body))

        body, target = args_body(5)
        second = httpx.put(relay.url + target, content=body, headers=signed_headers(busy, "PUT", target, body))
        assert second.status_code == 429 and second.json()["error"] == "too_many_uploads"
        assert int(second.headers["retry-after"]) >= 1
        body, target = args_body(6)
        assert httpx.put(relay.url + target, content=body,
                         headers=signed_headers(other, "PUT", target, body)).status_code == 201
    finally:
        held.close()

    def busy_signer_served() -> bool:
        body, target = args_body(7)
        return httpx.put(relay.url + target, content=body,
                         headers=signed_headers(busy, "PUT", target, body)).status_code == 201

    assert wait_until(busy_signer_served), "the slot of a closed upload was not given back"


def test_bodyBudget_exhausted_is503_untilTheHeldBodyEnds(start_relay):
    relay = start_relay("--body-budget-mib", "1")
    held = RawConn(relay.port)
    target = "/v1/tasks/1/results"
    try:
        headers = {**signed_headers(Account.create(), "POST", target, b"\1" * (900 * KiB)),
                   "Content-Type": "multipart/form-data; boundary=b"}
        held.send_head("POST", target, headers, 900 * KiB)
        held.sock.sendall(b"--b\r\n")
        assert wait_until(lambda: gauge(relay, "crynux_relay_body_bytes_in_flight") == 900 * KiB)
        body, target2 = args_body(8, pad=200 * KiB)
        r = httpx.put(relay.url + target2, content=body, headers=signed_headers(Account.create(), "PUT", target2, body))
        assert r.status_code == 503 and r.json()["error"] == "body_budget" and "retry-after" in r.headers
    finally:
        held.close()

    def served() -> bool:
        body, t = args_body(9, pad=200 * KiB)
        return httpx.put(relay.url + t, content=body,
                         headers=signed_headers(Account.create(), "PUT", t, body)).status_code == 201

    assert wait_until(served), "the budget of a closed upload was not given back"
    assert "Traceback" not in relay.proc.log()


# --- item 3: /metrics labels are bounded, rendering is off the event loop -------------------


def test_2000InventedMethods_doNotGrowMetrics(start_relay):
    relay = start_relay("--ip-rate", "100000", "--ip-burst", "100000")  # all of them reach the app
    before = httpx.get(relay.url + "/metrics").text
    with httpx.Client(base_url=relay.url, timeout=30) as client:
        for i in range(2000):
            client.request(f"M{i}X", f"/made/up/{i}" if i % 2 else "/v1/stats")
    after = httpx.get(relay.url + "/metrics").text
    assert len(after) - len(before) < 8 * KiB, f"/metrics grew from {len(before)} to {len(after)} bytes"
    assert "M17X" not in after and "/made/up/" not in after
    assert 'method="other",route="unmatched"' in after and 'method="other",route="/v1/stats"' in after


def test_metricsRendering_doesNotStallOtherRequests(start_relay):
    relay = start_relay("--ip-rate", "100000", "--ip-burst", "100000")
    with httpx.Client(base_url=relay.url, timeout=30) as client:
        for i in range(500):
            client.request(f"N{i}", "/v1/stats")
    stop = threading.Event()

    def scrape() -> None:
        with httpx.Client(base_url=relay.url, timeout=30) as c:
            while not stop.is_set():
                c.get("/metrics")

    scrapers = [threading.Thread(target=scrape, daemon=True) for _ in range(4)]
    for t in scrapers:
        t.start()
    try:
        latencies = []
        with httpx.Client(base_url=relay.url, timeout=30) as c:
            for _ in range(30):
                t0 = time.perf_counter()
                assert c.get("/openapi.json").status_code == 200
                latencies.append(time.perf_counter() - t0)
    finally:
        stop.set()
        for t in scrapers:
            t.join()
    assert max(latencies) < 1.0, f"a request waited {max(latencies):.2f} s behind /metrics"


# --- item 4: a timestamp of hundreds of digits ----------------------------------------------


def test_timestampOf400Digits_isMalformedNotOverflow():
    acct = Account.create()
    for digits in (400, 5000):  # 5000: over Python's int() digit limit
        headers = {**signed_headers(acct, "GET", "/v1/x"), HEADER_TIMESTAMP: "9" * digits}
        with pytest.raises(MalformedSignature, match="12 decimal digits"):
            verify_request("GET", "/v1/x", body_sha256(b""), headers)


def test_timestampOf400Digits_is401WithOneLogLine(start_relay):
    relay = start_relay("--log-level", "info")
    target = "/v1/tasks/1/args"
    headers = {**signed_headers(Account.create(), "GET", target), HEADER_TIMESTAMP: "9" * 400}
    r = httpx.get(relay.url + target, headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "malformed_signature"
    assert "X-Crynux-Timestamp" in r.json()["detail"] and len(r.text) < 400
    assert wait_until(lambda: "/v1/tasks/1/args" in relay.proc.log())
    log = relay.proc.log()
    assert "Traceback" not in log and "OverflowError" not in log
    assert len([line for line in log.splitlines() if "/v1/tasks/1/args" in line]) == 1, log


# --- item 6: rate limits ----------------------------------------------------------------------


def test_unsignedFlood_is429WithRetryAfter_signedGetStillServed(start_relay, network: Network):
    relay = start_relay("--ip-rate", "0.05", "--ip-burst", "5", "--refusal-delay", "0")
    creator = RelayClient(relay.url, network.local(network.creator))
    args = json.dumps({"prompt": "still served"}).encode()
    creator.put_args(args)
    with httpx.Client(base_url=relay.url, timeout=30) as client:
        statuses = [client.get("/v1/tasks/1/args") for _ in range(50)]
    codes = [r.status_code for r in statuses]
    assert 3 <= codes.count(401) <= 12 and codes.count(429) >= 38, codes
    limited = next(r for r in statuses if r.status_code == 429)
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert creator.get_own_args(keccak(args)) == args  # a valid signature is not in the IP's bucket
    assert httpx.get(relay.url + "/v1/tasks/1/args").status_code == 429  # while the flood's bucket is empty
    assert relay.proc.log().count("rate limiting 127.0.0.1") == 1


def test_badSignatures_overTheBudget_are429_knownSignerServed(start_relay, network: Network):
    relay = start_relay("--auth-fail-rate", "0.1", "--auth-fail-burst", "3", "--refusal-delay", "0")
    creator = RelayClient(relay.url, network.local(network.creator))
    args = json.dumps({"prompt": "known signer"}).encode()
    creator.put_args(args)  # the creator authenticates from 127.0.0.1
    target = "/v1/args/0x" + keccak(args).hex()
    codes, errors = [], []
    for _ in range(10):
        headers = signed_headers(Account.create(), "GET", target)
        headers["X-Crynux-Address"] = Account.create().address  # signed by another key
        r = httpx.get(relay.url + target, headers=headers)
        codes.append(r.status_code)
        errors.append(r.json()["error"])
    assert codes[:3] == [401] * 3 and errors[0] == "bad_signature", codes
    assert codes[3:] == [429] * 7 and set(errors[3:]) == {"auth_failures_limited"}, errors
    assert creator.get_own_args(keccak(args)) == args
    stranger = signed_headers(Account.create(), "GET", target)
    assert httpx.get(relay.url + target, headers=stranger).status_code == 429  # not verified until it refills


def test_signerOverItsRate_is429_otherSignersServed(start_relay, network: Network):
    relay = start_relay("--signer-rate", "0.2", "--signer-burst", "3", "--refusal-delay", "0")
    acct, other = network.local(network.creator), network.local(network.other_app)
    body, target = args_body(10)
    codes, responses = [], []
    for _ in range(6):
        r = httpx.get(relay.url + target, headers=signed_headers(acct, "GET", target))
        codes.append(r.status_code)
        responses.append(r)
    assert codes == [404, 404, 404, 429, 429, 429], codes  # 404: authenticated, nothing uploaded
    assert responses[3].json()["error"] == "signer_rate_limited" and int(responses[3].headers["retry-after"]) >= 1
    assert httpx.get(relay.url + target, headers=signed_headers(other, "GET", target)).status_code == 404
    # someone claiming the limited signer's address cannot make it worse, nor be let through
    forged = signed_headers(Account.create(), "GET", target)
    forged["X-Crynux-Address"] = acct.address
    assert httpx.get(relay.url + target, headers=forged).status_code == 429


def test_overTheIpRate_429IsHeldForTheDelay_signedRequestsAreNot(start_relay, network: Network):
    """The tarpit: a client over its rate waits `--refusal-delay` for each 429; a signed request
    from the same IP meanwhile is answered at once."""
    relay = start_relay("--ip-rate", "0.05", "--ip-burst", "1", "--refusal-delay", "1.5")
    creator = RelayClient(relay.url, network.local(network.creator))
    args = json.dumps({"prompt": "tarpit"}).encode()
    creator.put_args(args)
    assert httpx.get(relay.url + "/v1/tasks/1/args").status_code in (401, 429)  # spends the burst
    with ThreadPoolExecutor(8) as pool:
        t0 = time.perf_counter()
        held = [pool.submit(httpx.get, relay.url + "/v1/tasks/1/args", timeout=30) for _ in range(8)]
        time.sleep(0.2)
        assert creator.get_own_args(keccak(args)) == args
        signed_s = time.perf_counter() - t0
        refused = [f.result() for f in held]
        held_s = time.perf_counter() - t0
    assert all(r.status_code == 429 for r in refused)
    assert signed_s < 1.2 and held_s >= 1.5, (signed_s, held_s)


def test_rateTables_forgetTheOldestKeysBeyondTheirSize():
    buckets: TokenBuckets[str] = TokenBuckets(rate=1.0, burst=1, max_keys=100, clock=lambda: 0.0)
    for i in range(10_000):
        buckets.take(f"0x{i:040x}")
    assert len(buckets) == 100
    assert not buckets.take("0x" + f"{9_999:040x}").allowed  # the newest are remembered


def test_flood_of2000Unsigned_legitSignedGetStaysFast(start_relay, network: Network):
    """2,000 unsigned requests, 32 at a time, from the same IP as a signer doing signed GETs
    (default limits, a shorter tarpit to keep the test short): the signer's median latency stays
    low (bench_relay's `flood` measures it with the default delay)."""
    relay = start_relay("--refusal-delay", "0.25")
    creator = RelayClient(relay.url, network.local(network.creator))
    args = json.dumps({"prompt": "flood"}).encode()
    creator.put_args(args)
    flood = subprocess.Popen(
        [sys.executable, "-m", "tests.relay.flood", relay.url, "--requests", "2000", "--concurrency", "32"],
        stdout=subprocess.PIPE, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert flood.stdout is not None and flood.stdout.readline().strip() == b"started"
    latencies = []
    while flood.poll() is None:
        t0 = time.perf_counter()
        assert creator.get_own_args(keccak(args)) == args
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.02)
    out = json.loads(flood.stdout.read())
    assert set(out["statuses"]) <= {"401", "429"} and sum(out["statuses"].values()) == 2000, out
    latencies.sort()
    assert len(latencies) >= 5 and latencies[len(latencies) // 2] < 0.25, latencies


def test_relayClient_waitsOutA429ByItsRetryAfter_thenRaisesRelayBusyPastItsBudget(
    start_relay, network: Network
):
    """The client that nodes and the SDK use honours Retry-After on 429 (and 503) instead of
    failing: within its wait budget the call goes through, beyond it RelayBusy says how long."""
    from relay_client.client import RelayBusy

    relay = start_relay("--signer-rate", "0.5", "--signer-burst", "1", "--refusal-delay", "0")
    args = json.dumps({"prompt": "retried"}).encode()
    with RelayClient(relay.url, network.local(network.creator)) as client:
        t0 = time.perf_counter()
        client.put_args(args)  # spends the burst
        assert client.get_own_args(keccak(args)) == args  # 429 first, then served
        assert time.perf_counter() - t0 >= 1.0
    with RelayClient(relay.url, network.local(network.creator), max_retry_wait_s=0) as impatient:
        with pytest.raises(RelayBusy) as busy:
            impatient.get_own_args(keccak(args))
    assert busy.value.status == 429 and busy.value.retry_after_s is not None and busy.value.retry_after_s >= 1
