"""Checks of delivered result files: multipart parsing, PNG and canonical JSON validation,
the recomputed score (crynux_common.scores, shared with the node client)."""
from __future__ import annotations

import io
import json
from typing import AsyncIterator

from fastapi import Request
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from crynux_common import scores
from crynux_common.schemas import TaskType, canonical_json

from ..chain import TaskView
from ..storage import IncomingFile
from .body import Body
from .deps import RelayContext
from .errors import ApiError, bad_request

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


def check_result_files(task: TaskView, incoming: list[IncomingFile]) -> bytes:
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
