"""Admission control in front of the app (pure ASGI): everything a hostile client could abuse
is decided from the request head, before the app reads a byte of the body.

For a route that needs a signature (one whose handler depends on ``SignedRequest``):

1. the signature headers must be present, well formed and within the time window
   (``crynux_common.signing.check_headers``: no signature recovery, no database) - else 401,
   or 429 once the client IP has spent its budget of such requests;
2. the claimed signer must not be over its rate (its bucket is only ever spent by requests that
   authenticated, so nobody can spend it for someone else) - else 429;
3. when the client IP has spent its budget of failed verifications, only signers that already
   authenticated from that IP are let through to verification - else 429;
4. a declared Content-Length over the route's limit is 413 (spending the IP's bucket, as in 1);
5. a body reserves a share of the global body budget (503 when exhausted) and an upload slot
   of its signer and client IP (429 when they are all in use), and must arrive at a minimum
   average rate after a grace period (else 408 and the connection is closed).

Other routes (public ones, unknown paths) spend the client IP's bucket. A 429 for a rate is
answered after ``refusal_delay_s`` (a tarpit): refusing is cheap, but parsing a request is not,
and a flooding connection that waits a second for each answer can no longer take the event loop
from the signed requests (at most ``max_delayed_refusals`` are held; beyond, the answer comes at
once and the connection is closed). Every refusal is counted in
``crynux_relay_rejected_requests``; a client that starts being limited is logged once per
episode, not once per request.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crynux_common.signing import ExpiredTimestamp, MissingSignature, SignatureError, check_headers

from .auth import SIGNER_SCOPE_KEY
from .deps import SignedRequest
from .errors import ApiError, bad_request, busy, request_timeout, too_large, too_many_requests, unauthorized
from .metrics import RelayMetrics
from .ratelimit import AdmissionLimits
from .settings import RelaySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoutePolicy:
    """What the guard knows of one route: whether it needs a signature, and its body limit."""

    route: BaseRoute
    signed: bool
    body_limit: int = 0


def _signed_request(dependant: Dependant) -> SignedRequest | None:
    for dep in dependant.dependencies:
        if isinstance(dep.call, SignedRequest):
            return dep.call
        found = _signed_request(dep)
        if found is not None:
            return found
    return None


def route_policies(routes: Sequence[BaseRoute], settings: RelaySettings) -> list[RoutePolicy]:
    out = []
    for route in routes:
        signed = _signed_request(route.dependant) if isinstance(route, APIRoute) else None
        if signed is None:
            out.append(RoutePolicy(route, signed=False))
        else:
            out.append(RoutePolicy(route, signed=True, body_limit=signed._limit(settings)))
    return out


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def auth_code(exc: SignatureError) -> str:
    if isinstance(exc, MissingSignature):
        return "missing_signature"
    if isinstance(exc, ExpiredTimestamp):
        return "expired_timestamp"
    return "malformed_signature"


class _BodyDeadline(Exception):
    """The body did not arrive at the minimum rate."""


class TransportGuard:
    """See the module docstring. ``routes`` gives the app's routes (read on the first request,
    once every router is included)."""

    def __init__(
        self, app: ASGIApp, *, settings: RelaySettings, limits: AdmissionLimits, metrics: RelayMetrics,
        routes: Callable[[], Sequence[BaseRoute]],
    ) -> None:
        self.app = app
        self.settings = settings
        self.limits = limits
        self.metrics = metrics
        self._routes = routes
        self._policies: list[RoutePolicy] | None = None
        self._delayed = 0

    def _policy(self, scope: Scope) -> RoutePolicy | None:
        if self._policies is None:
            self._policies = route_policies(self._routes(), self.settings)
        for policy in self._policies:
            match, _ = policy.route.matches(scope)
            if match == Match.FULL:
                return policy
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ip = client_ip(scope)
        policy = self._policy(scope)
        if policy is not None:
            scope["route"] = policy.route  # the metrics label, also when the guard answers
        if policy is None or not policy.signed:
            decision = self.limits.ip.take(ip)
            if not decision.allowed:
                self._log_limited(decision.started_limiting, ip, "requests without signature")
                await self._refuse_later(send, too_many_requests(
                    "rate_limited", f"too many requests from {ip}", decision.retry_after_s))
                return
            await self.app(scope, receive, send)
            return
        await self._signed(scope, receive, send, policy, ip)

    async def _signed(self, scope: Scope, receive: Receive, send: Send, policy: RoutePolicy, ip: str) -> None:
        headers = Headers(scope=scope)
        limits = self.limits
        try:
            declared = _content_length(headers)
        except ApiError as exc:
            await self._refuse_unproven(send, ip, exc, close=True)
            return
        has_body = (declared or 0) > 0 or (declared is None and "transfer-encoding" in headers)
        try:
            claimed = check_headers(headers, window=self.settings.signature_window_s)
        except SignatureError as exc:
            code = auth_code(exc)
            await self._refuse_unproven(send, ip, unauthorized(str(exc), code), close=has_body)
            return
        signer = claimed.address.lower()
        wait = limits.signers.wait_s(signer)
        if wait > 0:
            await self._refuse_later(send, too_many_requests(
                "signer_rate_limited", f"{claimed.address} is over {limits.signers.rate:g} requests/s", wait),
                has_body)
            return
        wait = limits.auth_fails.wait_s(ip)
        if wait > 0 and (ip, signer) not in limits.known:
            await self._refuse_later(send, too_many_requests(
                "auth_failures_limited", f"too many failed signatures from {ip}; only signers already "
                "authenticated from it are verified now", wait), has_body)
            return
        if declared is not None and declared > policy.body_limit:
            await self._refuse_unproven(send, ip, too_large(
                f"the body has {declared} bytes; the limit is {policy.body_limit}"), close=has_body)
            return
        if not has_body:
            await self._run(scope, receive, send, ip, signer)
            return
        reserve = declared if declared is not None else policy.body_limit
        slot = (ip, signer)
        if not limits.uploads_per_signer.try_acquire(slot):
            await self._refuse(send, too_many_requests(
                "too_many_uploads", f"{claimed.address} already has {limits.uploads_per_signer.limit} "
                "uploads in progress", 1.0), has_body)
            return
        try:
            if not limits.uploads_per_ip.try_acquire(ip):
                await self._refuse(send, too_many_requests(
                    "too_many_uploads", f"{ip} already has {limits.uploads_per_ip.limit} uploads in progress",
                    1.0), has_body)
                return
            try:
                if not limits.body_budget.try_reserve(reserve):
                    await self._refuse(send, busy(
                        "body_budget", f"the relay is receiving {limits.body_budget.reserved} bytes of "
                        f"bodies; {reserve} more would exceed its budget", 5.0), has_body)
                    return
                self.metrics.body_bytes_in_flight.set(limits.body_budget.reserved)
                try:
                    await self._run(scope, self._paced(receive), send, ip, signer)
                finally:
                    limits.body_budget.release(reserve)
                    self.metrics.body_bytes_in_flight.set(limits.body_budget.reserved)
            finally:
                limits.uploads_per_ip.release(ip)
        finally:
            limits.uploads_per_signer.release(slot)

    def _paced(self, receive: Receive) -> Receive:
        """``receive`` that raises :class:`_BodyDeadline` when the body falls behind
        ``grace + received / min_rate`` seconds, counted from the app's first read."""
        loop = asyncio.get_running_loop()
        grace, rate = self.settings.body_grace_s, self.settings.body_min_rate_bytes_s
        started: float | None = None
        received = 0
        done = False

        async def paced_receive() -> Message:
            nonlocal started, received, done
            if done:
                return await receive()
            if started is None:
                started = loop.time()
            remaining = started + grace + received / rate - loop.time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.0))
            except asyncio.TimeoutError:
                raise _BodyDeadline(f"{received} bytes in {loop.time() - started:.1f} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = not message.get("more_body", False)
            return message

        return paced_receive

    async def _run(self, scope: Scope, receive: Receive, send: Send, ip: str, signer: str) -> None:
        """Runs the app; afterwards charges a failed verification to the client IP, or
        remembers the signer as known from that IP. A body that falls behind is answered 408
        here (when the app has not started its answer) and the connection closed."""
        status = 0
        closed = False  # the guard answered, or the client left: the app's messages go nowhere

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if closed:
                return
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        async def tracked_receive() -> Message:
            nonlocal closed
            try:
                return await receive()
            except _BodyDeadline as exc:
                closed = True
                self.metrics.rejected.labels("body_timeout").inc()
                log.warning("closing a slow upload from %s (%s): %s", ip, signer, exc)
                if status == 0:
                    await self._send_error(send, request_timeout(
                        f"the body must arrive at {self.settings.body_min_rate_bytes_s} bytes/s after "
                        f"{self.settings.body_grace_s:g} s"), close=True)
                return {"type": "http.disconnect"}

        try:
            await self.app(scope, tracked_receive, tracked_send)
        except ClientDisconnect:
            if not closed:
                log.info("client %s (%s) disconnected before its body was complete", ip, signer)
        except Exception as exc:
            if not closed:
                raise
            log.info("request of %s (%s) ended after its 408: %s: %s", ip, signer, type(exc).__name__, exc)
        finally:
            if status == 401:
                decision = self.limits.auth_fails.take(ip)
                self._log_limited(not decision.allowed and decision.started_limiting, ip, "failed signatures")
            authenticated = scope.get(SIGNER_SCOPE_KEY)
            if isinstance(authenticated, str):
                self.limits.known.add((ip, authenticated.lower()))

    def _log_limited(self, started: bool, ip: str, what: str) -> None:
        if started:
            log.warning("rate limiting %s: too many %s; answering 429 until it slows down", ip, what)

    async def _refuse(self, send: Send, error: ApiError, close: bool = False) -> None:
        self.metrics.rejected.labels(error.code).inc()
        await self._send_error(send, error, close=close)

    async def _refuse_unproven(self, send: Send, ip: str, error: ApiError, *, close: bool) -> None:
        """Refuses a request that proved nothing (no valid signature headers, or a body it may
        not send), spending the client IP's bucket: once it is empty, the answer is a delayed
        429 instead."""
        decision = self.limits.ip.take(ip)
        if not decision.allowed:
            self._log_limited(decision.started_limiting, ip, "requests without valid signature headers")
            await self._refuse_later(send, too_many_requests(
                "rate_limited", f"too many unsigned requests from {ip}", decision.retry_after_s), close)
            return
        if error.status == 401:
            self.metrics.auth_failures.labels(error.code).inc()
        await self._refuse(send, error, close)

    async def _refuse_later(self, send: Send, error: ApiError, close: bool = False) -> None:
        """A refusal for a rate, answered after the tarpit delay (or at once, closing the
        connection, when too many are held already)."""
        self.metrics.rejected.labels(error.code).inc()
        delay = self.settings.refusal_delay_s
        if delay > 0 and self._delayed < self.settings.max_delayed_refusals:
            self._delayed += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self._delayed -= 1
        else:
            close = close or delay > 0
        await self._send_error(send, error, close=close)

    @staticmethod
    async def _send_error(send: Send, error: ApiError, *, close: bool) -> None:
        """Answers ``error``; ``close`` asks the server to drop the connection (a body that
        was announced will not be read)."""
        body = error.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise bad_request("bad_content_length", "Content-Length is not a decimal integer")
    return int(value)
