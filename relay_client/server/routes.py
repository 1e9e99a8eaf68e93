"""The relay's HTTP routes. Every private route reads the body once (size-limited and hashed),
authenticates the signature, then asks the chain whether the signer may do what it asks."""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Annotated, AsyncIterator, Callable

from eth_utils import keccak
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from crynux_common import scores
from crynux_common.schemas import TaskType, canonical_json

from ..chain import ChainUnavailable, TaskChain, TaskView
from ..storage import AlreadyDelivered, IncomingFile, Store
from ..storage.store import sha256_file
from .attest import Attestor
from .auth import Authenticator, Signer
from .body import Body, read_body
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
from .metrics import CONTENT_TYPE_LATEST, RelayMetrics
from .schemas import (
    ArgsStored,
    Attestation,
    Delivered,
    Health,
    NetworkStats,
    ResultFileInfo,
    ResultManifest,
    StorageStatsOut,
)
from .settings import RelaySettings

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_DB_TASK_ID = 2**63 - 1

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


def ctx(request: Request) -> RelayContext:
    return request.app.state.relay  # type: ignore[no-any-return]


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


async def _task(c: RelayContext, task_id: int) -> TaskView:
    try:
        task = await run_in_threadpool(c.chain.get_task, task_id)
    except ChainUnavailable as exc:
        raise chain_unavailable(str(exc)) from exc
    if task is None or task_id > MAX_DB_TASK_ID:
        raise not_found("unknown_task", f"the market has no task {task_id}")
    return task


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _parse_hex(value: str, name: str, *, length: int | None = None) -> bytes:
    raw = value.strip().removeprefix("0x")
    try:
        data = bytes.fromhex(raw)
    except ValueError:
        raise bad_request("bad_field", f"{name} is not hex") from None
    if length is not None and len(data) != length:
        raise bad_request("bad_field", f"{name} must be {length} bytes, got {len(data)}")
    return data


router = APIRouter()


# --- arguments --------------------------------------------------------------------------------


@router.put(
    "/v1/args/{args_hash}",
    status_code=201,
    response_model=ArgsStored,
    summary="Upload task arguments (before creating the task on-chain)",
    description=(
        "Stores the raw JSON body under keccak256(body), which must equal `args_hash`, for the "
        "signer. A node assigned to a task whose on-chain argsHash is this hash and whose creator "
        "is this signer can then download it. At most 256 KiB. 201 when stored, 200 when this "
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
    actual = _hex(keccak(data))
    if actual != args_hash.lower():
        raise unprocessable("args_hash_mismatch", f"keccak256 of the body is {actual}, not {args_hash}")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request("malformed_json", f"the arguments are not UTF-8 JSON: {exc}") from None
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
        "task's creator, to a node the chain assigned to the task (executor or auditor)."
    ),
    responses={
        200: {"content": {"application/json": {}}, "description": "The arguments, byte for byte"},
        **responses(401, 403, 404, 503),
    },
    openapi_extra=SIGNED,
    tags=["arguments"],
)
async def get_task_args(request: Request, task_id: TaskId, signed: SignedRead) -> Response:
    c = ctx(request)
    signer = signed.signer
    task = await _task(c, task_id)
    if not task.is_assigned(signer.address):
        raise forbidden(f"{signer.address} is not assigned to task {task_id}")
    args_hash = _hex(task.args_hash)
    record = await run_in_threadpool(c.store.repo.get_args, args_hash, task.creator)
    if record is None:
        raise not_found("args_not_uploaded", f"the creator of task {task_id} has not uploaded {args_hash}")
    data = await run_in_threadpool(c.store.load_args, record)
    c.metrics.served_bytes.labels("args").inc(len(data))
    return Response(data, media_type="application/json", headers={"X-Crynux-Args-Hash": args_hash})


# --- results ----------------------------------------------------------------------------------


async def _parse_multipart(request: Request, body: Body, c: RelayContext) -> tuple[dict[str, str], list[UploadFile]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise bad_request("bad_content_type", "results are sent as multipart/form-data")

    async def chunks() -> AsyncIterator[bytes]:
        body.file.seek(0)
        while chunk := await run_in_threadpool(body.file.read, 1 << 20):
            yield chunk

    parser = MultiPartParser(
        Headers({"content-type": content_type}), chunks(),
        max_files=c.settings.max_result_files, max_fields=8, max_part_size=64 * 1024,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise bad_request("malformed_multipart", str(exc)) from None
    except Exception as exc:  # python-multipart raises its own types on garbage
        raise bad_request("malformed_multipart", f"cannot parse the form: {exc}") from None
    fields: dict[str, str] = {}
    files: list[UploadFile] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "files":
                await form.close()
                raise bad_request("bad_field", f"unexpected file field {name!r} (use 'files')")
            files.append(value)
        else:
            if name in fields:
                await form.close()
                raise bad_request("bad_field", f"field {name!r} given twice")
            fields[name] = value
    return fields, files


def _check_result_files(task: TaskView, incoming: list[IncomingFile]) -> bytes:
    """Validates the files for the task type and recomputes their score (blocking)."""
    if not incoming:
        return scores.ERROR_SCORE  # the node judged the arguments invalid
    contents = []
    for f in incoming:
        f.file.seek(0)
        contents.append(f.file.read())
        f.file.seek(0)
    if task.task_type == TaskType.IMAGE:
        if task.num_images and len(incoming) != task.num_images:
            raise bad_request(
                "wrong_file_count", f"task {task.task_id} has {task.num_images} images, got {len(incoming)} files"
            )
        for f, data in zip(incoming, contents, strict=True):
            if not data.startswith(PNG_MAGIC):
                raise bad_request("not_png", f"{f.name!r} is not a PNG image")
            try:
                with Image.open(io.BytesIO(data)) as img:
                    if img.format != "PNG":
                        raise bad_request("not_png", f"{f.name!r} is not a PNG image")
                    img.verify()
            except ApiError:
                raise
            except Exception as exc:
                raise bad_request("not_png", f"{f.name!r} is not a readable PNG: {exc}") from None
    elif task.task_type == TaskType.TEXT:
        if len(incoming) != 1:
            raise bad_request("wrong_file_count", f"a text result is one JSON file, got {len(incoming)}")
        try:
            obj = json.loads(contents[0].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise bad_request("malformed_json", f"the text result is not UTF-8 JSON: {exc}") from None
        if canonical_json(obj) != contents[0]:
            raise bad_request("not_canonical_json", "the text result must be canonical JSON (sorted keys, no spaces)")
    else:
        raise bad_request("unknown_task_type", f"task type {task.task_type} is not supported by this relay")
    try:
        return scores.score_for(task.task_type, contents)
    except scores.ScoreError as exc:
        raise bad_request("bad_result", str(exc)) from None


@router.post(
    "/v1/tasks/{task_id}/results",
    status_code=201,
    response_model=Delivered,
    summary="Deliver a task's results (its executor only)",
    description=(
        "multipart/form-data with fields `score` (0x-hex) and `salt` (0x-hex, 32 bytes) and the "
        "result files as `files` (image task: one PNG per image in order; text task: one canonical "
        "JSON file; none for the error score). The relay recomputes the score from the files, "
        "checks commitment(taskId, node, score, salt) against the on-chain commitment, stores the "
        "files and attests the delivery on-chain. 201 when the attestation is mined (or the "
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
        task = await _task(c, task_id)
        if signer.lower != task.executor.lower():
            raise forbidden(f"{signer.address} is not the executor of task {task_id}")
        if await run_in_threadpool(c.store.repo.get_delivery, task_id) is not None:
            raise conflict("already_delivered", f"task {task_id} has been delivered")
        fields, uploads = await _parse_multipart(request, body, c)
        if "score" not in fields or "salt" not in fields:
            raise bad_request("bad_field", "the fields 'score' and 'salt' are required")
        score = _parse_hex(fields["score"], "score")
        salt = _parse_hex(fields["salt"], "salt", length=32)
        incoming: list[IncomingFile] = []
        total = 0
        for up in uploads:
            digest, size = await run_in_threadpool(sha256_file, up.file)
            if size > s.max_result_file_bytes:
                raise too_large(f"{up.filename!r} has {size} bytes; the limit per file is {s.max_result_file_bytes}")
            total += size
            incoming.append(
                IncomingFile(
                    name=(up.filename or f"file{len(incoming)}")[:255],
                    content_type=(up.content_type or "application/octet-stream")[:100],
                    file=up.file, size=size, sha256=digest,  # type: ignore[arg-type]
                )
            )
        if total > s.max_task_result_bytes:
            raise too_large(f"the files have {total} bytes; the limit per task is {s.max_task_result_bytes}")
        computed = await run_in_threadpool(_check_result_files, task, incoming)
        if computed != score:
            raise unprocessable(
                "score_mismatch", f"the files' score is {_hex(computed)}, the request says {_hex(score)}"
            )
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
                f"commitment(task, node, score, salt) = {_hex(expected)}; on-chain {_hex(on_chain)}",
            )
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

    outcome = await run_in_threadpool(c.attestor.attest, task_id, s.attest_wait_s)
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


async def _delivered_for_creator(request: Request, task_id: int, signer: Signer):  # type: ignore[no-untyped-def]
    c = ctx(request)
    task = await _task(c, task_id)
    if signer.lower != task.creator.lower():
        raise forbidden(f"{signer.address} is not the creator of task {task_id}")
    delivery = await run_in_threadpool(c.store.repo.get_delivery, task_id)
    if delivery is None or not (delivery.attested or task.delivered):
        raise conflict("not_delivered", f"task {task_id} has no attested delivery yet")
    files = await run_in_threadpool(c.store.repo.result_files, task_id)
    return c, task, delivery, files


@router.get(
    "/v1/tasks/{task_id}/results",
    response_model=ResultManifest,
    summary="List a task's delivered result files (its creator only)",
    responses=responses(401, 403, 404, 409, 503),
    openapi_extra=SIGNED,
    tags=["results"],
)
async def get_results(request: Request, task_id: TaskId, signed: SignedRead) -> ResultManifest:
    _c, task, delivery, files = await _delivered_for_creator(request, task_id, signed.signer)
    return ResultManifest(
        task_id=task_id, task_type=task.task_type, node=delivery.node, score=delivery.score,
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
    c, _task_view, _delivery, files = await _delivered_for_creator(request, task_id, signed.signer)
    if index >= len(files):
        raise not_found("no_such_file", f"task {task_id} has {len(files)} result files")
    f = files[index]
    c.metrics.served_bytes.labels("results").inc(f.size)
    chunks = await run_in_threadpool(c.store.result_chunks, f)
    return StreamingResponse(
        iterate_in_threadpool(chunks), media_type=f.content_type,
        headers={"Content-Length": str(f.size), "X-Crynux-SHA256": f.sha256,
                 "Content-Disposition": f'attachment; filename="{f.name.replace(chr(34), "")}"'},
    )


# --- public -----------------------------------------------------------------------------------


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
    return Response(ctx(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

