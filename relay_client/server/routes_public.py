"""Public routes: network statistics, health, Prometheus metrics."""
from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..chain import ChainError, ChainUnavailable
from ..storage import BlobError, StorageError
from .deps import RelayContext, ctx, storage_guard
from .errors import responses
from .funds import FundsStatus
from .metrics import CONTENT_TYPE_LATEST
from .schemas import Health, NetworkStats, RelayFundsOut, StorageStatsOut

log = logging.getLogger(__name__)

router = APIRouter()

#: /metrics re-reads the relay's balance when its last reading is older than this.
METRICS_FUNDS_MAX_AGE_S = 10.0


@router.get("/v1/stats", response_model=NetworkStats, summary="Public network statistics", tags=["public"],
            responses=responses(503))
async def stats(request: Request) -> NetworkStats:
    c = ctx(request)
    with storage_guard(request):
        st = await run_in_threadpool(c.store.repo.stats)
    try:
        chain_stats: dict[str, int] | None = await run_in_threadpool(c.chain.stats)
    except ChainUnavailable:
        chain_stats = None
    return NetworkStats(
        relay_address=c.chain.relay_address, storage=StorageStatsOut(**st.__dict__), chain=chain_stats
    )


def _database(c: RelayContext) -> tuple[bool, int, str | None]:
    """(writable, pending attestations, problem)"""
    try:
        pending = c.store.repo.stats().deliveries_pending
        c.store.repo.probe_writable()
        return True, pending, None
    except StorageError as exc:
        return False, 0, f"database: {exc}"


def _blobs(c: RelayContext) -> tuple[bool, str | None]:
    try:
        c.store.probe_blobs()
        return True, None
    except BlobError as exc:
        return False, f"blob store ({c.store.blobs.describe()}): {exc}"


def _chain(c: RelayContext) -> tuple[int | None, FundsStatus | None, str | None]:
    """(block number or None when unreachable, the relay's funds, problem)"""
    try:
        block = c.chain.stats().get("block_number")
    except ChainError as exc:
        return None, None, f"chain: {exc}"
    try:
        funds = c.attestor.funds.refresh()
    except ChainError as exc:
        return block, None, f"chain: cannot read the relay's balance: {exc}"
    return block, funds, None


def _log_changes(request: Request, problems: list[str]) -> None:
    """Logs each problem when it appears and when it is gone (not on every poll)."""
    kinds = {p.split(":", 1)[0]: p for p in problems}
    before: dict[str, str] = getattr(request.app.state, "health_problems", {})
    for kind, problem in kinds.items():
        if kind not in before:
            log.warning("health: %s", problem)
    for kind in before.keys() - kinds.keys():
        log.info("health: %s is fine again", kind)
    request.app.state.health_problems = kinds


@router.get("/health", response_model=Health, summary="Liveness and dependencies", tags=["public"],
            responses={503: {"model": Health, "description": "The database or blob store cannot take "
                             "writes, the chain is unreachable or the relay is out of gas"}})
async def health(request: Request) -> Response:
    c = ctx(request)
    (db_ok, pending, db_problem), (blobs_ok, blob_problem), (block, funds, chain_problem) = await asyncio.gather(
        run_in_threadpool(_database, c), run_in_threadpool(_blobs, c), run_in_threadpool(_chain, c)
    )
    chain_ok = block is not None
    problems = [p for p in (db_problem, blob_problem, chain_problem) if p]
    broke = not (db_ok and blobs_ok and chain_ok)  # a balance that cannot be read alone: degraded
    if funds is not None and funds.empty:
        broke = True
        problems.append(f"gas: the relay account {c.chain.relay_address} cannot pay for an attestation "
                        f"({funds.balance_eth:.6f} ETH)")
    elif funds is not None and funds.low:
        problems.append(f"gas: the relay account covers only ~{funds.attestations_covered} attestations "
                        f"(warning below {funds.warn_below})")
    if c.attestor.funds.enabled and int(c.chain.relay_address, 16) == 0:
        problems.append("no relay key: deliveries are stored but never attested")
    _log_changes(request, problems)
    out = Health(
        status="unhealthy" if broke else "degraded" if problems else "ok",
        database=db_ok, blob_store=blobs_ok, chain=chain_ok, block_number=block,
        relay_address=c.chain.relay_address, pending_attestations=pending,
        funds=None if funds is None else RelayFundsOut(
            balance_wei=funds.balance_wei, balance_eth=funds.balance_eth, gas_price_wei=funds.gas_price_wei,
            attest_gas=funds.attest_gas, attest_gas_measured=funds.attest_gas_measured,
            attestations_covered=funds.attestations_covered, warn_below=funds.warn_below, low=funds.low,
        ),
        problems=problems,
    )
    return JSONResponse(out.model_dump(), status_code=503 if broke else 200)


@router.get("/metrics", summary="Prometheus metrics", tags=["public"],
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    c = ctx(request)
    try:  # the balance gauges (crynux_relay_balance_eth, crynux_relay_attestations_covered)
        await run_in_threadpool(c.attestor.funds.latest, METRICS_FUNDS_MAX_AGE_S)
    except ChainError as exc:
        log.debug("metrics: cannot read the relay's balance: %s", exc)
    return Response(await run_in_threadpool(c.metrics.render), media_type=CONTENT_TYPE_LATEST)
