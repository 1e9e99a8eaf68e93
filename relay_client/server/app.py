"""The relay's ASGI application: ``create_app(chain, store, settings)``."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..chain import TaskChain
from ..storage import Store
from .attest import Attestor
from .auth import Authenticator
from .deps import RelayContext
from .errors import ApiError, ErrorBody, api_error_handler
from .guard import TransportGuard
from .metrics import RelayMetrics, RequestMetricsMiddleware
from .ratelimit import AdmissionLimits
from .routes_args import router as args_router
from .routes_public import router as public_router
from .routes_results import router as results_router
from .settings import RelaySettings

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def create_app(
    chain: TaskChain,
    store: Store,
    settings: RelaySettings | None = None,
    *,
    run_worker: bool = True,
) -> FastAPI:
    """Builds the app. On startup it removes what interrupted uploads left behind, then
    starts the worker that retries pending delivery attestations."""
    s = settings or RelaySettings()
    metrics = RelayMetrics()
    limits = AdmissionLimits(s)
    context = RelayContext(
        settings=s, chain=chain, store=store,
        auth=Authenticator(store.repo, s.signature_window_s, signer_rate=limits.signers),
        metrics=metrics, attestor=Attestor(chain, store.repo, metrics, deadline_s=s.attest_deadline_s),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        report = await run_in_threadpool(store.recover, grace_seconds=s.gc_grace_s)
        log.info(
            "relay ready: %s; recovery removed %d temp files and %d orphan blobs",
            store.blobs.describe(), report.temp_files_removed, report.orphans_removed,
        )
        stop = asyncio.Event()
        worker = asyncio.create_task(context.attestor.run(s.attest_retry_interval_s, stop)) if run_worker else None
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                await worker

    app = FastAPI(
        title="Crynux relay",
        version=API_VERSION,
        description=(
            "Carries task arguments and results between applications and nodes, checked against "
            "the TaskMarket contract. Private routes need the signature headers described in "
            "crynux_common.signing (EIP-191 over method, path, body SHA-256, timestamp, address)."
        ),
        lifespan=lifespan,
    )
    app.state.relay = context
    app.add_exception_handler(ApiError, api_error_handler)

    async def validation_handler(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(ErrorBody(error="invalid_request", detail=detail).model_dump(), status_code=422)

    app.add_exception_handler(RequestValidationError, validation_handler)

    routers = (args_router, results_router, public_router)
    for router in routers:
        app.include_router(router)
    # The routers' own routes (included without a prefix), which the guard matches requests
    # against. The last middleware added is the outermost: metrics count what the guard refuses.
    app.add_middleware(TransportGuard, settings=s, limits=limits, metrics=metrics,
                       routes=lambda: [route for router in routers for route in router.routes])
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
