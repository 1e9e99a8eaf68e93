"""A flood of unsigned requests against a relay, run as its own process (so that its CPU use
does not hold the GIL of whoever measures latency meanwhile):

    python -m tests.relay.flood URL [--requests 2000] [--concurrency 32] [--path /v1/tasks/1/args]

Sends the requests, ``concurrency`` at a time over keep-alive connections, and prints one JSON
line: the count of each status code and the seconds it took.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

import httpx


async def flood(url: str, requests: int, concurrency: int, path: str) -> dict[str, object]:
    statuses: Counter[str] = Counter()
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                r = await client.get(path)
                statuses[str(r.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return {"statuses": dict(statuses), "seconds": round(time.perf_counter() - start, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--path", default="/v1/tasks/1/args")
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(flood(a.url, a.requests, a.concurrency, a.path))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
