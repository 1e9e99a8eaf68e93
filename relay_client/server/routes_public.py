"""Public routes: network statistics, health, Prometheus metrics."""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..chain import ChainUnavailable
from .deps import ctx
from .metrics import CONTENT_TYPE_LATEST
from .schemas import Health, NetworkStats, StorageStatsOut

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/v1/stats", response_model=NetworkStats, summary="Public network statistics", tags=["public"])
async def stats(request: Request) -> NetworkStats:
    c = ctx(request)
    st = await run_in_threadpool(c.store.repo.stats)
    try:
        chain_stats: dict[str, int] | None = await run_in_threadpool(c.chain.stats)
    except ChainUnavailable:
        chain_stats = None
    return NetworkStats(
        relay_address=c.chain.relay_address, storage=StorageStatsOut(**st.__dict__), chain=chain_stats
    )


@router.get("/health", response_model=Health, summary="Liveness and dependencies", tags=["public"],
            responses={503: {"model": Health, "description": "The database is unreachable"}})
async def health(request: Request) -> Response:
    c = ctx(request)
    try:
        st = await run_in_threadpool(c.store.repo.stats)
        db_ok, pending = True, st.deliveries_pending
    except Exception as exc:
        log.error("health: database unreachable: %s", exc)
        db_ok, pending = False, 0
    try:
        block = (await run_in_threadpool(c.chain.stats)).get("block_number")
        chain_ok = True
    except ChainUnavailable:
        block, chain_ok = None, False
    out = Health(
        status="ok" if db_ok and chain_ok else "degraded", database=db_ok, chain=chain_ok, block_number=block,
        relay_address=c.chain.relay_address, pending_attestations=pending,
    )
    return JSONResponse(out.model_dump(), status_code=200 if db_ok else 503)


@router.get("/metrics", summary="Prometheus metrics", tags=["public"],
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    return Response(await run_in_threadpool(ctx(request).metrics.render), media_type=CONTENT_TYPE_LATEST)
