"""Routes of task arguments: upload (any signer, keyed by keccak256), read back (the uploader),
download (a node the chain assigned to the task)."""
from __future__ import annotations

import logging

from eth_utils import keccak
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from crynux_common.schemas import JsonRejected, strict_json_loads

from ..chain import ChainUnavailable
from .deps import SIGNED, ArgsHash, ArgsUpload, SignedRead, TaskId, ctx, hex0x, load_task
from .errors import bad_request, chain_unavailable, forbidden, gone, not_found, responses, unprocessable
from .schemas import ArgsStored

log = logging.getLogger(__name__)

router = APIRouter()


@router.put(
    "/v1/args/{args_hash}",
    status_code=201,
    response_model=ArgsStored,
    summary="Upload task arguments (before creating the task on-chain)",
    description=(
        "Stores the raw JSON body under keccak256(body), which must equal `args_hash`, for the "
        "signer. A node assigned to a task whose on-chain argsHash is this hash and whose creator "
        "is this signer can then download it. At most 256 KiB of UTF-8 JSON: an object, no duplicate "
        "keys, no NaN/Infinity, nested at most 32 deep (400 `duplicate_json_key`, `json_too_deep`, "
        "`malformed_json`). 201 when stored, 200 when this "
        "signer had stored the same arguments before."
    ),
    responses={200: {"model": ArgsStored, "description": "Already stored"}, **responses(400, 401, 413, 422)},
    openapi_extra={
        **SIGNED,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
    },
    tags=["arguments"],
)
async def put_args(request: Request, args_hash: ArgsHash, signed: ArgsUpload) -> Response:
    c = ctx(request)
    signer = signed.signer
    data = signed.body.read_all()
    actual = hex0x(keccak(data))
    if actual != args_hash.lower():
        raise unprocessable("args_hash_mismatch", f"keccak256 of the body is {actual}, not {args_hash}")
    try:
        # Duplicate keys or deep nesting: parsers would disagree, or recurse until they crash.
        parsed = strict_json_loads(data)
    except JsonRejected as exc:
        raise bad_request(exc.code, f"the arguments are not strict UTF-8 JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise bad_request("malformed_json", "the arguments must be a JSON object")
    record, created = await run_in_threadpool(c.store.save_args, args_hash, signer.address, data)
    if created:
        c.metrics.stored_bytes.labels("args").inc(len(data))
        log.info("stored %d bytes of arguments %s for %s", len(data), args_hash, signer.address)
    out = ArgsStored(args_hash=record.args_hash, uploader=signer.address, size=record.size, created=created)
    return JSONResponse(out.model_dump(), status_code=201 if created else 200)


@router.get(
    "/v1/args/{args_hash}",
    summary="Read back arguments this signer uploaded",
    description="Lets an application check that its upload is stored (e.g. after a crash) before it creates "
    "the task. 404 unless the signer itself uploaded these arguments.",
    responses={200: {"content": {"application/json": {}}, "description": "The arguments, byte for byte"},
               **responses(401, 404)},
    openapi_extra=SIGNED,
    tags=["arguments"],
)
async def get_own_args(request: Request, args_hash: ArgsHash, signed: SignedRead) -> Response:
    c = ctx(request)
    signer = signed.signer
    record = await run_in_threadpool(c.store.repo.get_args, args_hash, signer.address)
    if record is None:
        raise not_found("args_not_uploaded", f"{signer.address} has not uploaded {args_hash}")
    data = await run_in_threadpool(c.store.load_args, record)
    return Response(data, media_type="application/json", headers={"X-Crynux-Args-Hash": record.args_hash})


@router.get(
    "/v1/tasks/{task_id}/args",
    summary="Download a task's arguments (its executor or auditors only)",
    description=(
        "Serves the arguments whose keccak256 is the task's on-chain argsHash, as uploaded by the "
        "task's creator, to a node the chain assigned to the task (executor or auditor). 404 "
        "`args_not_uploaded` while the creator may still upload them; 410 `args_missing` for good "
        "once the task has run `args_grace_s` (30 s) of chain time without them: its nodes then "
        "commit the error score, so a creator who never uploads pays the fee instead of costing "
        "the executor its QoS, and arguments uploaded later are not served for that task."
    ),
    responses={
        200: {"content": {"application/json": {}}, "description": "The arguments, byte for byte"},
        **responses(401, 403, 404, 410, 503),
    },
    openapi_extra=SIGNED,
    tags=["arguments"],
)
async def get_task_args(request: Request, task_id: TaskId, signed: SignedRead) -> Response:
    c = ctx(request)
    signer = signed.signer
    task = await load_task(c, task_id)
    if not task.is_assigned(signer.address):
        raise forbidden(f"{signer.address} is not assigned to task {task_id}")
    args_hash = hex0x(task.args_hash)
    repo = c.store.repo
    if await run_in_threadpool(repo.args_missing, task_id):
        raise gone("args_missing", f"the creator of task {task_id} did not upload {args_hash} in time")
    record = await run_in_threadpool(repo.get_args, args_hash, task.creator)
    if record is None:
        try:
            now = await run_in_threadpool(c.chain.chain_time)
        except ChainUnavailable as exc:
            raise chain_unavailable(str(exc)) from exc
        if task.start_time and now > task.start_time + c.settings.args_grace_s:
            await run_in_threadpool(repo.mark_args_missing, task_id)
            log.warning("task %d: its creator never uploaded %s; its nodes will commit the error score",
                        task_id, args_hash)
            raise gone("args_missing", f"the creator of task {task_id} did not upload {args_hash} in time")
        raise not_found("args_not_uploaded", f"the creator of task {task_id} has not uploaded {args_hash}")
    data = await run_in_threadpool(c.store.load_args, record)
    c.metrics.served_bytes.labels("args").inc(len(data))
    return Response(data, media_type="application/json", headers={"X-Crynux-Args-Hash": args_hash})
