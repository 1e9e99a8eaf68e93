"""In-memory admission limits of one relay process: token buckets, in-flight counters, a byte
budget. Every table is bounded, so that a client inventing keys (addresses, IPs) cannot grow it.

These are plain objects used from the event loop only (no locks: nothing awaits between a
check and its update).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, Hashable, TypeVar

if TYPE_CHECKING:
    from .settings import RelaySettings

K = TypeVar("K", bound=Hashable)

Clock = Callable[[], float]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    limited: bool = False  # refused since it was last allowed (to log an episode once)


@dataclass(frozen=True)
class Decision:
    """The outcome of :meth:`TokenBuckets.take`: allowed, or how long until a token is back."""

    allowed: bool
    retry_after_s: float = 0.0
    #: True on the first refusal after an allowed request: the caller logs one line per episode.
    started_limiting: bool = False


class TokenBuckets(Generic[K]):
    """One token bucket per key (``rate`` tokens a second, at most ``burst``), least recently
    used keys forgotten beyond ``max_keys`` (a forgotten key starts again with a full bucket)."""

    def __init__(self, rate: float, burst: int, max_keys: int, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a token bucket needs rate > 0, burst >= 1 and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[K, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _refill(self, key: K, create: bool) -> _Bucket | None:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if not create:
                return None
            bucket = _Bucket(tokens=float(self.burst), updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key: K, cost: float = 1.0) -> Decision:
        """Spends ``cost`` tokens of ``key`` when it has them."""
        bucket = self._refill(key, create=True)
        assert bucket is not None
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            bucket.limited = False
            return Decision(True)
        started = not bucket.limited
        bucket.limited = True
        return Decision(False, (cost - bucket.tokens) / self.rate, started)

    def charge(self, key: K, cost: float = 1.0) -> None:
        """Spends tokens whether or not there are enough (down to zero): for work already done."""
        bucket = self._refill(key, create=True)
        assert bucket is not None
        bucket.tokens = max(0.0, bucket.tokens - cost)

    def wait_s(self, key: K, cost: float = 1.0) -> float:
        """0 when ``key`` has ``cost`` tokens now, else the seconds until it has; spends nothing."""
        bucket = self._refill(key, create=False)
        if bucket is None or bucket.tokens >= cost:
            return 0.0
        return (cost - bucket.tokens) / self.rate


class InFlight(Generic[K]):
    """Counts what is in progress per key, up to ``limit`` each (the table holds only keys with
    something in progress, so it is bounded by the open connections)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[K, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, key: K) -> int:
        return self._counts.get(key, 0)

    def try_acquire(self, key: K) -> bool:
        n = self._counts.get(key, 0)
        if n >= self.limit:
            return False
        self._counts[key] = n + 1
        return True

    def release(self, key: K) -> None:
        n = self._counts.get(key, 0) - 1
        if n > 0:
            self._counts[key] = n
        else:
            self._counts.pop(key, None)


class ByteBudget:
    """A global budget of request-body bytes in flight (reserved before a body is read)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.reserved = 0

    def try_reserve(self, n: int) -> bool:
        if self.reserved + n > self.total:
            return False
        self.reserved += n
        return True

    def release(self, n: int) -> None:
        self.reserved = max(0, self.reserved - n)


class RecentSet(Generic[K]):
    """Keys seen within ``ttl_s``, at most ``max_keys`` (least recently seen forgotten first)."""

    def __init__(self, ttl_s: float, max_keys: int, clock: Clock = time.monotonic) -> None:
        self._ttl = ttl_s
        self._max = max_keys
        self._clock = clock
        self._seen: OrderedDict[K, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: K) -> None:
        self._seen[key] = self._clock() + self._ttl
        self._seen.move_to_end(key)
        if len(self._seen) > self._max:
            self._seen.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        expires = self._seen.get(key)  # type: ignore[call-overload]
        if expires is None:
            return False
        if expires < self._clock():
            del self._seen[key]  # type: ignore[arg-type]
            return False
        return True


#: How long a signer that authenticated from an IP stays trusted there when that IP's budget of
#: failed signatures is spent.
KNOWN_SIGNER_TTL_S = 3600.0


class AdmissionLimits:
    """The limit tables of one relay process, sized from its settings."""

    def __init__(self, settings: "RelaySettings", clock: Clock = time.monotonic) -> None:
        s = settings
        size = s.rate_table_size
        #: per client IP: requests that carry no valid signature headers (or go to public routes)
        self.ip: TokenBuckets[str] = TokenBuckets(s.ip_rate_per_s, s.ip_burst, size, clock)
        #: per client IP: signatures that failed verification in the app (each cost a recovery)
        self.auth_fails: TokenBuckets[str] = TokenBuckets(s.auth_fail_rate_per_s, s.auth_fail_burst, size, clock)
        #: per authenticated signer (lower-case address); spent only after a successful verification
        self.signers: TokenBuckets[str] = TokenBuckets(s.signer_rate_per_s, s.signer_burst, size, clock)
        #: (client IP, signer) pairs that authenticated recently
        self.known: RecentSet[tuple[str, str]] = RecentSet(KNOWN_SIGNER_TTL_S, size, clock)
        self.uploads_per_signer: InFlight[tuple[str, str]] = InFlight(s.max_uploads_per_signer)
        self.uploads_per_ip: InFlight[str] = InFlight(s.max_uploads_per_ip)
        self.body_budget = ByteBudget(s.max_inflight_body_bytes)
