"""What every route shares: the request context, the signature dependency, path parameter
types, task lookup and hex helpers."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, AsyncIterator, Callable, Iterator

from fastapi import Depends, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from ..chain import ChainUnavailable, TaskChain, TaskView
from ..storage import BlobUnavailable, Store, StorageUnavailable
from .attest import Attestor
from .auth import Authenticator, Signer
from .body import Body, read_body
from .errors import ApiError, api_error_handler, bad_request, chain_unavailable, not_found
from .metrics import RelayMetrics
from .notify import CreatorCache, DeliveryNotifier
from .settings import RelaySettings

log = logging.getLogger(__name__)

MAX_DB_TASK_ID = 2**63 - 1
#: Retry-After of a 503 while the database or the blob store is unavailable.
STORAGE_RETRY_AFTER_S = 5

TaskId = Annotated[int, Path(ge=0, lt=2**256, description="the on-chain task id")]
ArgsHash = Annotated[str, Path(pattern=r"^0x[0-9a-fA-F]{64}$", description="keccak256 of the arguments, 0x-hex")]

SIGNED = {
    "parameters": [
        {"name": "X-Crynux-Address", "in": "header", "required": True, "schema": {"type": "string"},
         "description": "the signer's address"},
        {"name": "X-Crynux-Timestamp", "in": "header", "required": True, "schema": {"type": "string"},
         "description": "unix seconds; must be within +-60 s of the relay's clock"},
        {"name": "X-Crynux-Signature", "in": "header", "required": True, "schema": {"type": "string"},
         "description": "EIP-191 personal_sign over the canonical request message (crynux_common.signing)"},
        {"name": "X-Crynux-Nonce", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "optional nonce, part of the signed message"},
    ]
}


@dataclass
class RelayContext:
    """The collaborators of the routes (kept on ``app.state.relay``)."""

    settings: RelaySettings
    chain: TaskChain
    store: Store
    auth: Authenticator
    metrics: RelayMetrics
    attestor: Attestor
    deliveries: DeliveryNotifier = field(default_factory=DeliveryNotifier)
    creators: CreatorCache = field(default_factory=CreatorCache)


def ctx(request: Request) -> RelayContext:
    return request.app.state.relay  # type: ignore[no-any-return]


def storage_unavailable(request: Request, exc: Exception) -> ApiError:
    """The 503 of a request the database or blob store could not serve, logged on one line."""
    log.warning("%s %s: %s; answered 503", request.method, request.url.path, exc)
    return ApiError(503, "storage_unavailable", f"the relay's storage is unavailable, retry later: {exc}",
                    headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)})


@contextmanager
def storage_guard(request: Request) -> Iterator[None]:
    """Turns StorageUnavailable / BlobUnavailable raised inside into that 503."""
    try:
        yield
    except (StorageUnavailable, BlobUnavailable) as exc:
        raise storage_unavailable(request, exc) from exc


async def storage_unavailable_handler(request: Request, exc: Exception) -> Response:
    """An app-wide handler for the same errors raised outside a signed route (for
    ``app.add_exception_handler((StorageUnavailable, BlobUnavailable), ...)``)."""
    return await api_error_handler(request, storage_unavailable(request, exc))


@dataclass
class Signed:
    """An authenticated request: its signer and its body (spooled, hashed)."""

    signer: Signer
    body: Body


class SignedRequest:
    """FastAPI dependency of every private route: reads the body once within the route's size
    limit (413), verifies the signature and the time window and refuses replays (401)."""

    def __init__(self, limit: Callable[[RelaySettings], int]) -> None:
        self._limit = limit

    async def __call__(self, request: Request) -> AsyncIterator[Signed]:
        c = ctx(request)
        body = await read_body(request, self._limit(c.settings))
        try:
            # Storage failures of the signature check (its replay record) and of the route
            # itself (raised into this generator) become a 503 with Retry-After.
            with storage_guard(request):
                try:
                    signer = await c.auth.authenticate(request, body.sha256)
                except ApiError as exc:
                    c.metrics.auth_failures.labels(exc.code).inc()
                    raise
                yield Signed(signer, body)
        finally:
            body.close()


ArgsUpload = Annotated[Signed, Depends(SignedRequest(lambda s: s.max_args_bytes))]
ResultsUpload = Annotated[
    Signed, Depends(SignedRequest(lambda s: s.max_task_result_bytes + s.multipart_overhead_bytes))
]
SignedRead = Annotated[Signed, Depends(SignedRequest(lambda s: s.max_unsigned_body_bytes))]


async def load_task(c: RelayContext, task_id: int) -> TaskView:
    try:
        task = await run_in_threadpool(c.chain.get_task, task_id)
    except ChainUnavailable as exc:
        raise chain_unavailable(str(exc)) from exc
    if task is None or task_id > MAX_DB_TASK_ID:
        raise not_found("unknown_task", f"the market has no task {task_id}")
    return task


async def creator_of(c: RelayContext, task_id: int) -> str:
    """The task's creator: read from the chain once, then from memory (it never changes)."""
    creator = c.creators.get(task_id)
    if creator is None:
        creator = (await load_task(c, task_id)).creator
        c.creators.put(task_id, creator)
    return creator


def hex0x(data: bytes) -> str:
    return "0x" + data.hex()


def parse_hex(value: str, name: str, *, length: int | None = None) -> bytes:
    raw = value.strip().removeprefix("0x")
    try:
        data = bytes.fromhex(raw)
    except ValueError:
        raise bad_request("bad_field", f"{name} is not hex") from None
    if length is not None and len(data) != length:
        raise bad_request("bad_field", f"{name} must be {length} bytes, got {len(data)}")
    return data
