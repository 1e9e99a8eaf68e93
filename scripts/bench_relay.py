"""Relay benchmark: signed uploads and downloads per second of 100 KiB results, one worker.

    ape run bench_relay [--tasks 40] [--out bench/relay.json]

Deploys token, registry and market on a local Anvil, starts a relay process (SQLite +
files, one uvicorn worker) and, one request at a time, for each task: the executor uploads
a 100 KiB PNG result (the relay recomputes the pHash, checks the commitment on-chain,
stores the file and waits until its attestDelivery transaction is mined), then the creator
downloads it. Chain set-up per task (create, commit) is not timed. Then the executor of one
more task sends a decompression bomb (a 0.5 MB PNG of 13300 x 13300 zero pixels) with its
committed score and salt: `bomb` in the report has the answer, its time and the relay
process's extra peak memory (VmHWM; goal <= 100 MB). Prints a table and writes bench/relay.json.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
@click.option("--out", default="bench/relay.json", show_default=True, type=click.Path(path_type=Path))
def cli(network: str, tasks: int, out: Path) -> None:
    test = accounts.test_accounts
    owner, treasury = test[0], test[1]
    rpc = getattr(chain.provider, "uri", None) or chain.provider.web3.provider.endpoint_uri
    net = deploy_network(project, test, owner, treasury, rpc)
    png, side = _result_png(100 * KiB)
    score = scores.image_score([png])

    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        root = Path(tmp)
        relay = RelayProcess(rpc=rpc, deployment=net.write_deployment(root / "deployment.json"),
                             data=root / "data", key=net.relay_key).start()
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
    click.echo(f"written to {out}")
