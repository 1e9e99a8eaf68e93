"""The relay's ASGI application: ``create_app(chain, store, settings)``."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..chain import TaskChain
from ..storage import Store
from .attest import Attestor
from .auth import Authenticator
from .errors import ApiError, ErrorBody, api_error_handler
from .metrics import RelayMetrics
from .deps import RelayContext
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
    context = RelayContext(
        settings=s, chain=chain, store=store, auth=Authenticator(store.repo, s.signature_window_s),
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

    @app.middleware("http")
    async def observe(request: Request, call_next):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, name, str(response.status_code)).inc()
        metrics.latency.labels(request.method, name).observe(time.perf_counter() - start)
        return response

    for router in (args_router, results_router, public_router):
        app.include_router(router)
    return app
