"""API errors: one exception type, one JSON shape ``{"error": code, "detail": text}``."""
from __future__ import annotations

import json
import math

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the relay."""

    error: str
    detail: str


class ApiError(Exception):
    """Raised by handlers; becomes an HTTP answer with ``status`` and an ErrorBody."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None,
        *, retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.extra_headers = dict(headers or {})
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """WWW-Authenticate on a 401, Retry-After (whole seconds, at least 1) when set, and any
        headers given at construction."""
        out: dict[str, str] = {}
        if self.status == 401:
            out["WWW-Authenticate"] = "Crynux-Signature"
        if self.retry_after_s is not None:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        out.update(self.extra_headers)
        return out

    def body(self) -> bytes:
        return json.dumps(ErrorBody(error=self.code, detail=self.detail).model_dump()).encode()


def bad_request(code: str, detail: str) -> ApiError:
    return ApiError(400, code, detail)


def unauthorized(detail: str, code: str = "unauthorized") -> ApiError:
    return ApiError(401, code, detail)


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "forbidden", detail)


def not_found(code: str, detail: str) -> ApiError:
    return ApiError(404, code, detail)


def conflict(code: str, detail: str) -> ApiError:
    return ApiError(409, code, detail)


def gone(code: str, detail: str) -> ApiError:
    return ApiError(410, code, detail)


def too_large(detail: str) -> ApiError:
    return ApiError(413, "too_large", detail)


def too_many_requests(code: str, detail: str, retry_after_s: float) -> ApiError:
    return ApiError(429, code, detail, retry_after_s=retry_after_s)


def request_timeout(detail: str) -> ApiError:
    return ApiError(408, "body_timeout", detail)


def busy(code: str, detail: str, retry_after_s: float) -> ApiError:
    return ApiError(503, code, detail, retry_after_s=retry_after_s)


def unprocessable(code: str, detail: str) -> ApiError:
    return ApiError(422, code, detail)


def chain_unavailable(detail: str) -> ApiError:
    return ApiError(503, "chain_unavailable", detail)


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        ErrorBody(error=exc.code, detail=exc.detail).model_dump(), status_code=exc.status,
        headers=exc.headers() or None,
    )


def responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    text = {
        400: "Malformed request", 401: "Missing, bad, expired or replayed signature",
        403: "Signer not allowed", 404: "Unknown task or data", 409: "Not in a state that allows this",
        410: "Gone for good (e.g. arguments never uploaded in time)",
        408: "Body not sent fast enough", 413: "Body over the size limit (nothing stored)",
        422: "Content does not match its hash, score or commitment",
        429: "Over a rate or concurrency limit (see Retry-After)",
        503: "Chain or storage unavailable, or the relay is busy (retry after Retry-After seconds)",
    }
    return {s: {"model": ErrorBody, "description": text.get(s, "Error")} for s in statuses}
