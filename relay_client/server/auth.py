"""Authentication: the request signature (crynux_common.signing) plus replay protection.

A request is accepted once: the relay remembers the hash of every accepted signed message
in the database until its time window has passed, so a replay is refused even across a
restart. Failures are 401; whether the signer may do what it asks (403) is the route's call.
A signer over its request rate is 429 (its bucket is spent only here, after verification).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from crynux_common.signing import (
    ExpiredTimestamp,
    MalformedSignature,
    MissingSignature,
    SignatureError,
    replay_key,
    verify_request,
)

from ..storage import Repository
from .errors import too_many_requests, unauthorized
from .ratelimit import TokenBuckets

log = logging.getLogger(__name__)

#: Where an authenticated request's signer (checksummed address) is left in the ASGI scope, for
#: the admission guard (relay_client.server.guard) to remember it.
SIGNER_SCOPE_KEY = "crynux.signer"


@dataclass(frozen=True)
class Signer:
    """The authenticated caller."""

    address: str  # checksummed

    @property
    def lower(self) -> str:
        return self.address.lower()


def request_target(request: Request) -> str:
    """The path and query exactly as the client sent them (what was signed)."""
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    query = request.scope.get("query_string", b"")
    return path + ("?" + query.decode("latin-1") if query else "")


class Authenticator:
    def __init__(self, repo: Repository, window_s: int, signer_rate: TokenBuckets[str] | None = None) -> None:
        self._repo = repo
        self._window = window_s
        self._signer_rate = signer_rate

    async def authenticate(self, request: Request, body_sha256: str) -> Signer:
        method, target = request.method, request_target(request)
        try:
            headers = verify_request(method, target, body_sha256, request.headers, window=self._window)
        except MissingSignature as exc:
            raise unauthorized(str(exc), "missing_signature") from exc
        except ExpiredTimestamp as exc:
            raise unauthorized(str(exc), "expired_timestamp") from exc
        except MalformedSignature as exc:
            raise unauthorized(str(exc), "malformed_signature") from exc
        except SignatureError as exc:
            raise unauthorized(str(exc), "bad_signature") from exc
        if self._signer_rate is not None:
            decision = self._signer_rate.take(headers.address.lower())
            if not decision.allowed:
                if decision.started_limiting:
                    log.warning("rate limiting signer %s: over %g requests/s; answering 429",
                                headers.address, self._signer_rate.rate)
                raise too_many_requests(
                    "signer_rate_limited", f"{headers.address} is over {self._signer_rate.rate:g} requests/s",
                    decision.retry_after_s,
                )
        key = replay_key(method, target, body_sha256, headers)
        expires = headers.timestamp + self._window + 1
        fresh = await run_in_threadpool(self._repo.remember_request, key, expires, time.time())
        if not fresh:
            log.warning("replayed request from %s refused: %s %s", headers.address, method, target)
            raise unauthorized("this signed request was already used", "replayed_request")
        request.scope[SIGNER_SCOPE_KEY] = headers.address
        return Signer(headers.address)
