"""Prometheus metrics of one relay app (its own registry: no process-global state)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["RelayMetrics", "CONTENT_TYPE_LATEST"]


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
        self.attestations = Counter(
            "crynux_relay_attestations", "Delivery attestations by outcome (mined, already, rejected, retry)",
            ["outcome"], registry=self.registry,
        )
        self.pending_attestations = Gauge(
            "crynux_relay_pending_attestations", "Stored deliveries not yet attested on-chain",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
