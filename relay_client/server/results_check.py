"""Checks of delivered result files: multipart parsing, then, cheapest first, the files'
structure (PNG chunks and IHDR dimensions against the task's arguments, sizes), and only after
the on-chain commitment matched, the decode that recomputes the score (crynux_common.scores,
shared with the node client) in one of a few decode slots."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import Request
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from crynux_common import scores
from crynux_common.schemas import (
    ArgsError,
    JsonRejected,
    TaskType,
    canonical_json,
    parse_image_args,
    strict_json_loads,
)

from ..chain import TaskView
from ..storage import IncomingFile
from .body import Body
from .deps import RelayContext, hex0x
from .errors import bad_request, too_large, unprocessable
from .png_check import PngRejected, inspect_png

#: Decodes (PNG inflate + pHash, text result parse) running at once in one relay process:
#: each holds at most one image of at most FALLBACK_MAX_SIDE^2 pixels (~16 MB as RGBA).
DECODE_SLOTS = 2
#: The argument schema's largest side: the bound of an image whose task arguments the relay
#: cannot read.
FALLBACK_MAX_SIDE = 2048
#: A text result is a chat completion of at most 4096 tokens (kilobytes of JSON).
MAX_TEXT_RESULT_BYTES = 1024 * 1024


def safe_name(name: str | None, index: int) -> str:
    """A file name fit for a header: printable ASCII without quotes or slashes, <= 100 chars."""
    cleaned = "".join(ch if 32 < ord(ch) < 127 and ch not in '"\\/;' else "_" for ch in (name or ""))
    return cleaned[:100] or f"file{index}"


async def parse_multipart(request: Request, body: Body, c: RelayContext) -> tuple[dict[str, str], list[UploadFile]]:
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


def image_size_from_args(c: RelayContext, task: TaskView) -> tuple[int, int] | None:
    """(width, height) the task's stored arguments ask for; None when the relay has no valid
    image arguments for the task (blocking)."""
    repo = c.store.repo
    if repo.args_missing(task.task_id):
        return None
    record = repo.get_args(hex0x(task.args_hash), task.creator)
    if record is None:
        return None
    try:
        args = parse_image_args(c.store.load_args(record))
    except ArgsError:
        return None
    return args.task_config.image_width, args.task_config.image_height


def check_result_structure(task: TaskView, incoming: list[IncomingFile], size: tuple[int, int] | None) -> None:
    """The cheap checks, before the commitment and before anything is decompressed
    (blocking): file count, each PNG's chunks (still image, nothing after IEND) and its IHDR
    dimensions against the task's ``size`` (or FALLBACK_MAX_SIDE when unknown), the text
    result's size."""
    if not incoming:
        return
    if task.task_type == TaskType.IMAGE:
        if task.num_images and len(incoming) != task.num_images:
            raise bad_request(
                "wrong_file_count", f"task {task.task_id} has {task.num_images} images, got {len(incoming)} files"
            )
        for f in incoming:
            try:
                png = inspect_png(f.file)  # type: ignore[arg-type]
            except PngRejected as exc:
                raise bad_request(exc.code, f"{f.name!r}: {exc}") from None
            finally:
                f.file.seek(0)
            if size is not None and (png.width, png.height) != size:
                raise unprocessable("wrong_image_size", f"{f.name!r} is {png.width} x {png.height} pixels; "
                                    f"task {task.task_id} asked for {size[0]} x {size[1]}")
            if size is None and max(png.width, png.height) > FALLBACK_MAX_SIDE:
                raise unprocessable("wrong_image_size", f"{f.name!r} is {png.width} x {png.height} pixels; "
                                    f"at most {FALLBACK_MAX_SIDE} x {FALLBACK_MAX_SIDE} are accepted")
    elif task.task_type == TaskType.TEXT:
        if len(incoming) != 1:
            raise bad_request("wrong_file_count", f"a text result is one JSON file, got {len(incoming)}")
        if incoming[0].size > MAX_TEXT_RESULT_BYTES:
            raise too_large(f"the text result has {incoming[0].size} bytes; the limit is {MAX_TEXT_RESULT_BYTES}")
    else:
        raise bad_request("unknown_task_type", f"task type {task.task_type} is not supported by this relay")


def check_score_shape(task: TaskView, incoming: list[IncomingFile], score: bytes) -> None:
    """A claimed score that cannot be these files' score, whatever their pixels: 422 at once."""
    if not incoming:
        expected = 0
    elif task.task_type == TaskType.IMAGE:
        expected = scores.PHASH_BYTES * len(incoming)
    else:
        expected = scores.TEXT_SCORE_BYTES
    if len(score) != expected:
        raise unprocessable("score_mismatch", f"{len(incoming)} result "
                            f"file(s) have a {expected}-byte score; the request says {len(score)} bytes")


def compute_score(task: TaskView, incoming: list[IncomingFile]) -> bytes:
    """Decodes the files one at a time and recomputes their score (blocking; the expensive
    part: run it after check_result_structure and the commitment, inside a decode slot)."""
    if not incoming:
        return scores.ERROR_SCORE  # the node judged the arguments invalid
    if task.task_type == TaskType.TEXT:
        data = _read(incoming[0])
        try:
            obj = strict_json_loads(data)
        except JsonRejected as exc:
            raise bad_request(exc.code, f"the text result is not strict UTF-8 JSON: {exc}") from None
        if canonical_json(obj) != data:
            raise bad_request("not_canonical_json", "the text result must be canonical JSON (sorted keys, no spaces)")
        return scores.text_score(data)
    hashes = []
    for f in incoming:  # one file in memory at a time (at most max_result_file_bytes)
        try:
            hashes.append(scores.phash_bytes(_read(f), max_pixels=FALLBACK_MAX_SIDE**2))
        except scores.ScoreError as exc:
            raise bad_request("not_png", f"{f.name!r} is not a readable PNG: {exc}") from None
    return b"".join(hashes)


def _read(f: IncomingFile) -> bytes:
    f.file.seek(0)
    try:
        return f.file.read()
    finally:
        f.file.seek(0)


@asynccontextmanager
async def decode_slot(app: Starlette) -> AsyncIterator[None]:
    """One of the DECODE_SLOTS of this relay process (waited for without holding a thread)."""
    slots = getattr(app.state, "decode_slots", None)
    if slots is None:
        slots = app.state.decode_slots = asyncio.Semaphore(DECODE_SLOTS)
    async with slots:
        yield
