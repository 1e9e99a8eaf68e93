"""Routes of task results: delivery by the executor (checked, stored, attested on-chain) and
download by the creator once delivered."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile

from crynux_common import scores
from crynux_common.enums import TaskStatus
from crynux_common.schemas import TaskType

from ..chain import ChainUnavailable
from ..storage import AlreadyDelivered, Delivery, IncomingFile, ResultFile
from ..storage.store import sha256_file
from .auth import Signer
from .deps import (
    SIGNED,
    RelayContext,
    ResultsUpload,
    SignedRead,
    TaskId,
    creator_of,
    ctx,
    hex0x,
    load_task,
    parse_hex,
)
from .errors import (
    ApiError,
    bad_request,
    chain_unavailable,
    conflict,
    forbidden,
    not_found,
    responses,
    too_large,
    unprocessable,
)
from .results_check import (
    check_result_structure,
    check_score_shape,
    compute_score,
    decode_slot,
    image_size_from_args,
    parse_multipart,
    safe_name,
)
from .schemas import Attestation, Delivered, ResultFileInfo, ResultManifest

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset(int(st) for st in TaskStatus if st.is_final)
#: The longest a results request may be held waiting for the delivery (long polling).
MAX_RESULTS_WAIT_S = 30.0
#: How often a held request re-reads the database (deliveries stored by another process).
DELIVERY_RECHECK_S = 0.5

router = APIRouter()


@router.post(
    "/v1/tasks/{task_id}/results",
    status_code=201,
    response_model=Delivered,
    summary="Deliver a task's results (its executor only)",
    description=(
        "multipart/form-data with fields `score` (0x-hex) and `salt` (0x-hex, 32 bytes) and the "
        "result files as `files` (image task: one still PNG per image in order, of the size the "
        "task's arguments ask for, nothing after IEND; text task: one canonical JSON file of at most "
        "1 MiB; none for the error score). The relay checks the files' structure, then "
        "commitment(taskId, node, score, salt) against the on-chain commitment, and only then "
        "decodes the files to recompute the score; it stores the files and attests the delivery "
        "on-chain. 201 when the attestation is mined (or the "
        "market refused it: see `attestation.state`), 202 when it is still being retried. Each "
        "file at most 20 MiB, all files at most 200 MiB."
    ),
    responses={202: {"model": Delivered, "description": "Stored; attestation pending"},
               **responses(400, 401, 403, 404, 409, 413, 422, 503)},
    openapi_extra={
        **SIGNED,
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["score", "salt"],
                        "properties": {
                            "score": {"type": "string"},
                            "salt": {"type": "string"},
                            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        },
                    }
                }
            },
        },
    },
    tags=["results"],
)
async def post_results(request: Request, task_id: TaskId, signed: ResultsUpload) -> Response:
    c = ctx(request)
    s = c.settings
    signer, body = signed.signer, signed.body
    uploads: list[UploadFile] = []
    try:
        task = await load_task(c, task_id)
        if signer.lower != task.executor.lower():
            raise forbidden(f"{signer.address} is not the executor of task {task_id}")
        if await run_in_threadpool(c.store.repo.get_delivery, task_id) is not None:
            raise conflict("already_delivered", f"task {task_id} has been delivered")
        if task.status in FINAL_STATUSES:
            raise conflict("task_closed", f"task {task_id} is closed ({TaskStatus(task.status).name}): "
                                          "it takes no delivery")
        fields, uploads = await parse_multipart(request, body, c)
        if "score" not in fields or "salt" not in fields:
            raise bad_request("bad_field", "the fields 'score' and 'salt' are required")
        score = parse_hex(fields["score"], "score")
        salt = parse_hex(fields["salt"], "salt", length=32)
        incoming: list[IncomingFile] = []
        total = 0
        for up in uploads:
            digest, size = await run_in_threadpool(sha256_file, up.file)
            if size > s.max_result_file_bytes:
                raise too_large(f"{up.filename!r} has {size} bytes; the limit per file is {s.max_result_file_bytes}")
            total += size
            incoming.append(
                IncomingFile(
                    name=safe_name(up.filename, len(incoming)),
                    # The relay names the type it checked, whatever the client claimed.
                    content_type="image/png" if task.task_type == TaskType.IMAGE else "application/json",
                    file=up.file, size=size, sha256=digest,  # type: ignore[arg-type]
                )
            )
        if total > s.max_task_result_bytes:
            raise too_large(f"the files have {total} bytes; the limit per task is {s.max_task_result_bytes}")
        try:
            # Cheapest first: nothing is decompressed before the file structure, the image sizes
            # the task asked for and the executor's on-chain commitment all agree.
            size = None
            if task.task_type == TaskType.IMAGE and incoming:
                size = await run_in_threadpool(image_size_from_args, c, task)
            await run_in_threadpool(check_result_structure, task, incoming, size)
            check_score_shape(task, incoming, score)
            try:
                on_chain = await run_in_threadpool(c.chain.commitment_of, task_id, signer.address)
            except ChainUnavailable as exc:
                raise chain_unavailable(str(exc)) from exc
            if not any(on_chain):
                raise conflict("not_committed", f"{signer.address} has no commitment for task {task_id} on-chain")
            expected = scores.commitment(task_id, signer.address, score, salt)
            if expected != on_chain:
                raise unprocessable(
                    "commitment_mismatch",
                    f"commitment(task, node, score, salt) = {hex0x(expected)}; on-chain {hex0x(on_chain)}",
                )
            async with decode_slot(request.app):
                computed = await run_in_threadpool(compute_score, task, incoming)
            if computed != score:
                raise unprocessable(
                    "score_mismatch", f"the files' score is {hex0x(computed)}, the request says {hex0x(score)}"
                )
        except ApiError as exc:
            log.warning("task %d: refused the delivery of %s: %d %s: %s", task_id, signer.address, exc.status,
                        exc.code, exc.detail)
            raise
        try:
            delivery = await run_in_threadpool(
                lambda: c.store.save_delivery(
                    task_id=task_id, node=signer.address, task_type=task.task_type, score=score, salt=salt,
                    files=incoming,
                )
            )
        except AlreadyDelivered as exc:
            raise conflict("already_delivered", str(exc)) from exc
        c.metrics.stored_bytes.labels("results").inc(total)
    finally:
        for up in uploads:
            await up.close()

    loop = asyncio.get_running_loop()
    outcome = await run_in_threadpool(
        c.attestor.attest, task_id, s.attest_wait_s, lambda: loop.call_soon_threadsafe(c.deliveries.notify, task_id)
    )
    c.deliveries.notify(task_id)
    files = await run_in_threadpool(c.store.repo.result_files, task_id)
    out = Delivered(
        task_id=task_id, node=signer.address, task_type=task.task_type, score=delivery.score,
        files=[ResultFileInfo(index=f.idx, name=f.name, content_type=f.content_type, size=f.size, sha256=f.sha256)
               for f in files],
        total_size=delivery.total_size,
        attestation=Attestation(
            state=outcome.state, tx_hash=outcome.tx_hash, block_number=outcome.block_number, error=outcome.error
        ),
    )
    return JSONResponse(out.model_dump(), status_code=202 if outcome.state == "pending" else 201)


async def _ready_delivery(c: RelayContext, task_id: int) -> Delivery | None:
    """The task's delivery once it may be served: stored after the relay recomputed its score
    and matched the executor's on-chain commitment, and its attestation accepted by the chain
    (sent, perhaps not mined yet: the application gets its result at step 5 of the lifecycle,
    not a block later). An attestation not sent (the relay lacks RELAY_ROLE, the RPC is down)
    or refused by the market: served only once the chain counts the task delivered."""
    delivery = await run_in_threadpool(c.store.repo.get_delivery, task_id)
    if delivery is None:
        return None
    if delivery.attested or (delivery.attest_tx is not None and not delivery.attest_failed):
        return delivery
    return delivery if (await load_task(c, task_id)).delivered else None


async def _delivered_for_creator(
    request: Request, task_id: int, signer: Signer, wait_s: float = 0.0
) -> tuple[RelayContext, Delivery, list[ResultFile]]:
    c = ctx(request)
    creator = await creator_of(c, task_id)
    if signer.lower != creator.lower():
        raise forbidden(f"{signer.address} is not the creator of task {task_id}")
    delivery = await _ready_delivery(c, task_id)
    if delivery is None and wait_s > 0:
        deadline = time.monotonic() + wait_s
        while delivery is None and (left := deadline - time.monotonic()) > 0:
            # Woken by this process's upload route; the periodic re-read covers deliveries
            # stored by another relay process sharing the database.
            await c.deliveries.wait(task_id, min(left, DELIVERY_RECHECK_S))
            delivery = await _ready_delivery(c, task_id)
    if delivery is None:
        raise conflict("not_delivered", f"task {task_id} has no verified delivery yet")
    files = await run_in_threadpool(c.store.repo.result_files, task_id)
    return c, delivery, files


@router.get(
    "/v1/tasks/{task_id}/results",
    response_model=ResultManifest,
    summary="List a task's delivered result files (its creator only)",
    description=(
        "Available as soon as the relay has verified and stored the executor's delivery and the "
        "chain has accepted its attestation `attest_tx` (perhaps not mined yet). With `wait`, "
        "an undelivered task's request is held up to that many seconds and answered the moment "
        "the delivery is stored (long polling); 409 `not_delivered` if it is not by then."
    ),
    responses=responses(401, 403, 404, 409, 503),
    openapi_extra=SIGNED,
    tags=["results"],
)
async def get_results(
    request: Request, task_id: TaskId, signed: SignedRead,
    wait: Annotated[float, Query(ge=0, le=MAX_RESULTS_WAIT_S, description="seconds to wait for the delivery")] = 0.0,
) -> ResultManifest:
    _c, delivery, files = await _delivered_for_creator(request, task_id, signed.signer, wait)
    return ResultManifest(
        task_id=task_id, task_type=delivery.task_type, node=delivery.node, score=delivery.score,
        files=[ResultFileInfo(index=f.idx, name=f.name, content_type=f.content_type, size=f.size, sha256=f.sha256)
               for f in files],
        total_size=delivery.total_size, attest_tx=delivery.attest_tx,
    )


@router.get(
    "/v1/tasks/{task_id}/results/{index}",
    summary="Download one delivered result file (its creator only)",
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file"},
               **responses(401, 403, 404, 409, 503)},
    openapi_extra=SIGNED,
    tags=["results"],
)
async def get_result_file(
    request: Request, task_id: TaskId, index: Annotated[int, Path(ge=0, le=10_000)], signed: SignedRead
) -> Response:
    c, _delivery, files = await _delivered_for_creator(request, task_id, signed.signer)
    if index >= len(files):
        raise not_found("no_such_file", f"task {task_id} has {len(files)} result files")
    f = files[index]
    c.metrics.served_bytes.labels("results").inc(f.size)
    chunks = await run_in_threadpool(c.store.result_chunks, f)
    return StreamingResponse(
        iterate_in_threadpool(chunks), media_type=f.content_type,
        headers={"Content-Length": str(f.size), "X-Crynux-SHA256": f.sha256,
                 "Content-Disposition": f'attachment; filename="{safe_name(f.name, index)}"'},
    )
