"""Prometheus metrics of one relay app (its own registry: no process-global state), and the ASGI
middleware that counts every request.

Every label takes values from a bounded set, so that no client can grow the registry: methods
outside :data:`KNOWN_METHODS` are ``other``, routes are the matched route's template (or
``unmatched``), never the raw path.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RelayMetrics", "RequestMetricsMiddleware", "CONTENT_TYPE_LATEST", "method_label", "route_label"]

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def route_label(scope: Scope) -> str:
    """The template of the route that handled the request (set by the router, or by the guard
    when it answered first), ``unmatched`` otherwise."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "crynux_relay_requests", "HTTP requests by route and status", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "crynux_relay_request_seconds", "HTTP request latency by route", ["method", "route"],
            registry=self.registry,
        )
        self.stored_bytes = Counter(
            "crynux_relay_stored_bytes", "Bytes stored, by kind (args, results)", ["kind"], registry=self.registry
        )
        self.served_bytes = Counter(
            "crynux_relay_served_bytes", "Bytes served, by kind (args, results)", ["kind"], registry=self.registry
        )
        self.auth_failures = Counter(
            "crynux_relay_auth_failures", "Refused signatures by reason", ["reason"], registry=self.registry
        )
        self.rejected = Counter(
            "crynux_relay_rejected_requests",
            "Requests refused by the admission checks before their body was read, by reason",
            ["reason"], registry=self.registry,
        )
        self.body_bytes_in_flight = Gauge(
            "crynux_relay_body_bytes_in_flight", "Request-body bytes reserved by bodies being received",
            registry=self.registry,
        )
        self.attestations = Counter(
            "crynux_relay_attestations", "Delivery attestations by outcome (mined, already, rejected, retry)",
            ["outcome"], registry=self.registry,
        )
        self.pending_attestations = Gauge(
            "crynux_relay_pending_attestations", "Stored deliveries not yet attested on-chain",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition (blocking: call it from a worker thread)."""
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts each HTTP request by (bounded) method, route template and status, and its latency
    until the response is sent."""

    def __init__(self, app: ASGIApp, metrics: RelayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            method, route = method_label(scope["method"]), route_label(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
