"""A flood of unsigned requests against a relay, run as its own process (so that its CPU use
does not hold the GIL of whoever measures latency meanwhile):

    python -m tests.relay.flood URL [--requests 2000] [--concurrency 32] [--path /v1/tasks/1/args]
                                    [--bad-signatures]

Prints ``started`` when it is ready, sends the GET requests ``concurrency`` at a time, each
worker over its own keep-alive connection (a bare HTTP/1.1 client on asyncio streams: an HTTP
library would spend more CPU than the relay and flood it less), then prints one JSON line: the
count of each status code and the seconds it took. With ``--bad-signatures`` the requests carry
well-formed signature headers (a random address, a fresh timestamp, 65 random bytes) that the
relay can only refuse after trying to recover the signer.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from urllib.parse import urlsplit


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[str, bool]:
    """Sends one request, reads its response; returns the status and whether the server closes."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0].split(" ", 2)[1], headers.get("connection", "").lower() == "close"


def bad_signature_headers() -> str:
    return (f"X-Crynux-Address: 0x{os.urandom(20).hex()}\r\nX-Crynux-Timestamp: {int(time.time())}\r\n"
            f"X-Crynux-Signature: 0x{os.urandom(65).hex()}\r\n")


async def flood(url: str, requests: int, concurrency: int, path: str, bad_signatures: bool = False) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = bad_signature_headers() if bad_signatures else ""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
    statuses: Counter[str] = Counter()
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while remaining > 0:
            remaining -= 1
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                status, close = await _exchange(*conn, request)
                statuses[status] += 1
            except (OSError, asyncio.IncompleteReadError) as exc:
                statuses[type(exc).__name__] += 1
                close = True
            if close and conn is not None:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    print("started", flush=True)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"statuses": dict(statuses), "seconds": round(time.perf_counter() - start, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--path", default="/v1/tasks/1/args")
    p.add_argument("--bad-signatures", action="store_true")
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(flood(a.url, a.requests, a.concurrency, a.path, a.bad_signatures))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
