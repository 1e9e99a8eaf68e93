"""Relay benchmark: signed uploads and downloads per second of 100 KiB results, one worker.

    ape run bench_relay [--tasks 40] [--flood-requests 2000] [--out bench/relay.json]

Deploys token, registry and market on a local Anvil, starts a relay process (SQLite +
files, one uvicorn worker) and, one request at a time, for each task: the executor uploads
a 100 KiB PNG result (the relay recomputes the pHash, checks the commitment on-chain,
stores the file and waits until its attestDelivery transaction is mined), then the creator
downloads it. Chain set-up per task (create, commit) is not timed. Then the executor of one
more task sends a decompression bomb (a 0.5 MB PNG of 13300 x 13300 zero pixels) with its
committed score and salt: `bomb` in the report has the answer, its time and the relay
process's extra peak memory (VmHWM; goal <= 100 MB).

Then the `flood` entry: the p50 latency of a signed GET (the creator reading back its
arguments, one every 20 ms) while another process sends 2,000 unsigned requests to a signed
route, 32 at a time, from the same IP (default admission limits; goal: p50 <= 50 ms), next to
the same GET's p50 without the flood; `flood.bad_signatures`: the same with 2,000 requests
whose signature headers are well formed but wrong (each worth a recovery to the relay).
Prints a table and writes bench/relay.json.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import click
from ape import accounts, chain, project
from ape.cli import ConnectedProviderCommand, network_option
from eth_account import Account
from eth_keys import KeyAPI
from eth_utils import keccak

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first: tests.relay helpers

from crynux_common import scores  # noqa: E402
from crynux_common.signing import body_sha256, sign_request, verify_request  # noqa: E402
from relay_client.client import RelayClient, ResultUpload, encode_multipart  # noqa: E402
from tests.relay.helpers import RelayProcess  # noqa: E402
from tests.relay.hostile import PeakMemory, bomb_png  # noqa: E402
from tests.relay.network import deploy_network, image_args, noise_png  # noqa: E402

KiB = 1024
BOMB_SIDE = 13300
BOMB_GOAL_EXTRA_MB = 100
REPO_ROOT = Path(__file__).resolve().parents[1]
FLOOD_CONCURRENCY = 32
FLOOD_GOAL_P50_MS = 50.0


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[int(q * (len(ordered) - 1))] * 1000, 2)


def _timed_reads(read: Callable[[], object], until: Callable[[], bool], gap_s: float = 0.02) -> list[float]:
    samples: list[float] = []
    while not until():
        t0 = time.perf_counter()
        read()
        samples.append(time.perf_counter() - t0)
        time.sleep(gap_s)
    return samples


def _under_flood(relay_url: str, read: Callable[[], object], requests: int, *flags: str) -> dict[str, object]:
    """Times ``read`` every 20 ms while a flood process sends ``requests`` requests."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.relay.flood", relay_url, "--requests", str(requests),
         "--concurrency", str(FLOOD_CONCURRENCY), "--path", "/v1/tasks/1/args", *flags],
        stdout=subprocess.PIPE, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"started"
    legit = _timed_reads(read, lambda: proc.poll() is not None)
    flood = json.loads(proc.stdout.read())
    return {"seconds": flood["seconds"], "statuses": flood["statuses"], "samples": len(legit),
            "p50_ms": _p(legit, 0.5), "p95_ms": _p(legit, 0.95)}


def _flood(relay_url: str, creator: RelayClient, requests: int) -> dict[str, object]:
    """A signed GET's latency alone, then while `requests` unsigned requests arrive 32 at a
    time, then while as many requests with bad signatures do."""
    args = image_args(999_999, 1)
    creator.put_args(args)
    args_hash = keccak(args)

    def read() -> object:
        return creator.get_own_args(args_hash)

    baseline_end = time.monotonic() + 1.0
    baseline = _timed_reads(read, lambda: time.monotonic() > baseline_end)
    unsigned = _under_flood(relay_url, read, requests)
    bad = _under_flood(relay_url, read, requests, "--bad-signatures")
    return {
        "unsigned_requests": requests,
        "concurrency": FLOOD_CONCURRENCY,
        "flood_seconds": unsigned["seconds"],
        "flood_statuses": unsigned["statuses"],
        "legit_samples": unsigned["samples"],
        "legit_p50_ms": unsigned["p50_ms"],
        "legit_p95_ms": unsigned["p95_ms"],
        "baseline_p50_ms": _p(baseline, 0.5),
        "goal_p50_ms": FLOOD_GOAL_P50_MS,
        "bad_signatures": bad,
    }


def _summary(name: str, samples: list[float], size: int) -> dict[str, float | int | str]:
    total = sum(samples)
    return {
        "operation": name,
        "count": len(samples),
        "bytes_each": size,
        "per_second": round(len(samples) / total, 1) if total else 0.0,
        "p50_ms": round(statistics.median(samples) * 1000, 2),
        "p95_ms": round(sorted(samples)[int(0.95 * (len(samples) - 1))] * 1000, 2),
        "mb_per_second": round(len(samples) * size / total / 1e6, 2) if total else 0.0,
    }


def _result_png(target: int) -> tuple[bytes, int]:
    """A noise PNG of at least ``target`` bytes and its side (a multiple of 8, as task
    arguments need: the relay takes result images of the size the arguments ask for)."""
    side = int((target / 3) ** 0.5) // 8 * 8
    data = noise_png(1, side, side)
    while len(data) < target:
        side += 8
        data = noise_png(1, side, side)
    return data, side


def _bomb(net, relay: RelayProcess, png: bytes, side: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """One bomb upload by a task's executor, with its committed score and salt."""
    import httpx

    args = image_args(99_999, 1, size=side)
    RelayClient(relay.url, net.local(net.creator)).put_args(args)
    task_id = net.create_task(args, num_images=1)
    executor = net.executor(task_id)
    score, salt = scores.image_score([png]), scores.new_salt()
    net.commit(task_id, executor, score, salt)
    bomb = bomb_png(BOMB_SIDE, BOMB_SIDE)
    body, ctype = encode_multipart({"score": "0x" + score.hex(), "salt": "0x" + salt.hex()},
                                   [ResultUpload("0.png", bomb)])
    target = f"/v1/tasks/{task_id}/results"
    headers = {**sign_request(net.local(executor), "POST", target, body).as_dict(), "Content-Type": ctype}
    assert relay.proc is not None
    with PeakMemory(relay.proc.pid) as mem:
        t0 = time.perf_counter()
        r = httpx.post(relay.url + target, content=body, headers=headers, timeout=300)
        answer_s = time.perf_counter() - t0
    return {
        "png": f"{BOMB_SIDE} x {BOMB_SIDE} zero RGB pixels", "bytes": len(bomb),
        "status": r.status_code, "error": r.json().get("error"),
        "answer_ms": round(answer_s * 1000, 1),
        "relay_peak_extra_mb": round(mem.extra_mb, 1), "goal_peak_extra_mb": BOMB_GOAL_EXTRA_MB,
    }


@click.command(cls=ConnectedProviderCommand)
@network_option(default="ethereum:local:foundry")
@click.option("--tasks", default=40, show_default=True, help="number of tasks (uploads and downloads)")
@click.option("--flood-requests", default=2000, show_default=True,
              help="unsigned requests of the flood (0: no flood entry)")
@click.option("--relay-args", default="", help="extra flags of the relay process, e.g. '--refusal-delay 0'")
@click.option("--out", default="bench/relay.json", show_default=True, type=click.Path(path_type=Path))
def cli(network: str, tasks: int, flood_requests: int, relay_args: str, out: Path) -> None:
    test = accounts.test_accounts
    owner, treasury = test[0], test[1]
    rpc = getattr(chain.provider, "uri", None) or chain.provider.web3.provider.endpoint_uri
    net = deploy_network(project, test, owner, treasury, rpc)
    png, side = _result_png(100 * KiB)
    score = scores.image_score([png])

    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        root = Path(tmp)
        relay = RelayProcess(rpc=rpc, deployment=net.write_deployment(root / "deployment.json"),
                             data=root / "data", key=net.relay_key, extra=relay_args.split()).start()
        try:
            creator = RelayClient(relay.url, net.local(net.creator))
            args_up: list[float] = []
            args_down: list[float] = []
            uploads: list[float] = []
            downloads: list[float] = []
            for i in range(tasks):
                args = image_args(10_000 + i, 1, size=side)
                t0 = time.perf_counter()
                creator.put_args(args)
                args_up.append(time.perf_counter() - t0)
                task_id = net.create_task(args, num_images=1)
                executor = net.executor(task_id)
                node = RelayClient(relay.url, net.local(executor))
                t0 = time.perf_counter()
                node.get_task_args(task_id, expected_hash=keccak(args))
                args_down.append(time.perf_counter() - t0)
                salt = scores.new_salt()
                net.commit(task_id, executor, score, salt)
                t0 = time.perf_counter()
                delivered = node.upload_results(task_id, [ResultUpload("0.png", png)], score, salt)
                uploads.append(time.perf_counter() - t0)
                assert delivered.attestation.state == "mined", delivered.attestation
                t0 = time.perf_counter()
                got = creator.download_result(task_id, 0, delivered.files[0].sha256)
                downloads.append(time.perf_counter() - t0)
                assert got == png
                node.close()
            bomb = _bomb(net, relay, png, side)
            flood = _flood(relay.url, creator, flood_requests) if flood_requests else None
        finally:
            relay.stop()

    acct = Account.create()
    digest = body_sha256(png)
    t0 = time.perf_counter()
    signed = [sign_request(acct, "POST", "/v1/tasks/1/results", body_hash=digest, timestamp=1) for _ in range(50)]
    sign_s = (time.perf_counter() - t0) / 50
    t0 = time.perf_counter()
    for s in signed:
        verify_request("POST", "/v1/tasks/1/results", digest, s.as_dict(), now=1)
    verify_s = (time.perf_counter() - t0) / 50

    rows = [
        _summary("upload result (verify, pHash, commitment, store, attest mined)", uploads, len(png)),
        _summary("download result (signed GET, sha256 checked)", downloads, len(png)),
        _summary("upload arguments", args_up, len(image_args(0, 1))),
        _summary("download arguments (executor)", args_down, len(image_args(0, 1))),
    ]
    report = {
        "benchmark": "relay",
        "workers": 1,
        "relay_args": relay_args,
        "result_bytes": len(png),
        "tasks": tasks,
        "storage": "SQLite (WAL, synchronous=FULL) + local files (fsync)",
        "chain": "Anvil (auto-mine)",
        "sign_ms": round(sign_s * 1000, 2),
        "verify_ms": round(verify_s * 1000, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "secp256k1_backend": type(KeyAPI().backend).__name__,
        "results": rows,
        "bomb": bomb,
        "flood": flood,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    click.echo(f"relay benchmark: {tasks} tasks, {len(png)} byte PNG results, one uvicorn worker, one client")
    header = f"{'operation':<66} {'n':>4} {'per s':>7} {'p50 ms':>8} {'p95 ms':>8} {'MB/s':>6}"
    click.echo(header)
    click.echo("-" * len(header))
    for r in rows:
        click.echo(f"{r['operation']:<66} {r['count']:>4} {r['per_second']:>7} {r['p50_ms']:>8} "
                   f"{r['p95_ms']:>8} {r['mb_per_second']:>6}")
    click.echo(f"signature: sign {report['sign_ms']} ms, verify {report['verify_ms']} ms "
               f"({report['secp256k1_backend']}); load average {report['machine']['load_average_1m']}")
    click.echo(f"bomb ({bomb['png']}, {bomb['bytes']} bytes): {bomb['status']} {bomb['error']} in "
               f"{bomb['answer_ms']} ms; relay peak +{bomb['relay_peak_extra_mb']} MB "
               f"(goal <= {BOMB_GOAL_EXTRA_MB})")
    if flood:
        click.echo(f"flood: signed GET p50 {flood['legit_p50_ms']} ms (p95 {flood['legit_p95_ms']} ms, "
                   f"{flood['legit_samples']} samples; {flood['baseline_p50_ms']} ms without the flood) while "
                   f"{flood['unsigned_requests']} unsigned requests arrived {flood['concurrency']} at a time "
                   f"in {flood['flood_seconds']} s {flood['flood_statuses']}; goal <= {flood['goal_p50_ms']} ms")
        bad = flood["bad_signatures"]
        assert isinstance(bad, dict)
        click.echo(f"flood of bad signatures: signed GET p50 {bad['p50_ms']} ms (p95 {bad['p95_ms']} ms) while "
                   f"{flood['unsigned_requests']} arrived in {bad['seconds']} s {bad['statuses']}")
    click.echo(f"written to {out}")
