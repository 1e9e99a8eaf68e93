"""The relay account's gas: how many more delivery attestations its ETH pays for.

Every delivery the relay stores is attested on-chain by ``attestDelivery`` from the relay's
own account. When that account runs dry, attestations stop, tasks run past their deadline
and are refunded, and honest executors are scored 0. The monitor reads the balance and the
gas price, divides by the gas an attestation takes (measured from the relay's own mined
attestations; until there are any, the upper end of what attestDelivery costs), logs a
warning below a threshold and exposes the numbers to /health and /metrics.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from ..chain import RelayFunds
from .metrics import RelayMetrics

log = logging.getLogger(__name__)

#: attestDelivery takes ~90k gas, up to ~240k when it draws auditors: assume the upper end
#: until the relay has measured its own.
DEFAULT_ATTEST_GAS = 240_000
#: Warn when the balance covers fewer attestations than this.
DEFAULT_WARN_BELOW = 100
#: While the balance stays low, repeat the warning this often.
WARN_EVERY_S = 600.0
#: How many recent attestations the gas figure averages.
GAS_SAMPLES = 64


@dataclass(frozen=True)
class FundsStatus:
    balance_wei: int
    gas_price_wei: int
    attest_gas: int
    attest_gas_measured: bool
    attestation_cost_wei: int
    attestations_covered: int
    warn_below: int
    checked_at: float

    @property
    def low(self) -> bool:
        return self.attestations_covered < self.warn_below

    @property
    def empty(self) -> bool:
        return self.attestations_covered == 0

    @property
    def balance_eth(self) -> float:
        return self.balance_wei / 1e18


class FundsMonitor:
    """Thread-safe; ``refresh`` reads the chain (raises ChainUnavailable), ``latest`` may reuse
    a recent reading."""

    def __init__(self, chain: Any, metrics: RelayMetrics | None = None, *,
                 warn_below: int = DEFAULT_WARN_BELOW, warn_every_s: float = WARN_EVERY_S) -> None:
        self._chain = chain
        self.warn_below = warn_below
        self._warn_every_s = warn_every_s
        self._gas: deque[int] = deque(maxlen=GAS_SAMPLES)
        self._lock = threading.Lock()
        self._last: FundsStatus | None = None
        self._warned_at: float | None = None
        self._gauges: tuple[Gauge, Gauge, Gauge] | None = None
        if metrics is not None:
            r = metrics.registry
            self._gauges = (
                Gauge("crynux_relay_balance_eth", "ETH balance of the relay's attesting account", registry=r),
                Gauge("crynux_relay_attestations_covered",
                      "Delivery attestations the relay's balance still pays for at the current gas price",
                      registry=r),
                Gauge("crynux_relay_attest_gas", "Gas one delivery attestation takes (measured average)",
                      registry=r),
            )

    @property
    def enabled(self) -> bool:
        """False when the chain gateway cannot tell a balance (tests' fake chains)."""
        return callable(getattr(self._chain, "relay_funds", None))

    def record_gas(self, gas_used: int | None) -> None:
        if gas_used:
            with self._lock:
                self._gas.append(gas_used)

    def attest_gas(self) -> tuple[int, bool]:
        """(gas per attestation, measured?)"""
        with self._lock:
            if not self._gas:
                return DEFAULT_ATTEST_GAS, False
            return round(sum(self._gas) / len(self._gas)), True

    def refresh(self) -> FundsStatus | None:
        """Reads the balance and gas price now; None when the relay has no key."""
        if not self.enabled:
            return None
        funds: RelayFunds | None = self._chain.relay_funds()
        if funds is None:
            return None
        gas, measured = self.attest_gas()
        cost = max(1, gas * funds.gas_price_wei)
        status = FundsStatus(
            balance_wei=funds.balance_wei, gas_price_wei=funds.gas_price_wei, attest_gas=gas,
            attest_gas_measured=measured, attestation_cost_wei=cost,
            attestations_covered=funds.balance_wei // cost, warn_below=self.warn_below, checked_at=time.time(),
        )
        self._publish(status)
        return status

    def latest(self, max_age_s: float) -> FundsStatus | None:
        last = self._last
        if last is not None and time.time() - last.checked_at <= max_age_s:
            return last
        return self.refresh()

    def _publish(self, status: FundsStatus) -> None:
        with self._lock:
            was_low = self._last is not None and self._last.low
            self._last = status
            now = status.checked_at
            due = self._warned_at is None or now - self._warned_at >= self._warn_every_s
            warn = status.low and (not was_low or due)
            if warn:
                self._warned_at = now
        if self._gauges is not None:
            balance, covered, gas = self._gauges
            balance.set(status.balance_eth)
            covered.set(status.attestations_covered)
            gas.set(status.attest_gas)
        address = getattr(self._chain, "relay_address", "?")
        if warn:
            log.warning(
                "relay account %s is low on gas: %.6f ETH pays for ~%d more delivery attestations at %.3f gwei "
                "(%d gas each; warning below %d). Send ETH to it, or attestations stop and tasks are refunded",
                address, status.balance_eth, status.attestations_covered, status.gas_price_wei / 1e9,
                status.attest_gas, status.warn_below,
            )
        elif was_low and not status.low:
            log.info("relay account %s funded again: ~%d attestations covered",
                     address, status.attestations_covered)
