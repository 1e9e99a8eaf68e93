"""Reading a request body once, within a size limit, while hashing it."""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

from fastapi import Request

from .errors import bad_request, too_large

SPOOL_IN_MEMORY = 1024 * 1024


@dataclass
class Body:
    """A request body spooled to memory or a temporary file, with its SHA-256."""

    file: BinaryIO
    size: int
    sha256: str

    def read_all(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.file.close()


async def read_body(request: Request, limit: int) -> Body:
    """Reads the whole body; 413 as soon as it exceeds ``limit`` (nothing is kept)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise bad_request("bad_content_length", "Content-Length is not an integer") from None
        if declared_n > limit:
            raise too_large(f"the body has {declared_n} bytes; the limit is {limit}")
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(f"the body exceeds the limit of {limit} bytes")
            digest.update(chunk)
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return Body(file=spool, size=size, sha256=digest.hexdigest())  # type: ignore[arg-type]
