"""Loaded models stay warm between tasks: an LRU cache bounded by a memory budget."""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


def module_bytes(modules: Iterable[Any]) -> int:
    """Bytes held by the parameters and buffers of the torch modules among `modules`."""
    total = 0
    for m in modules:
        if isinstance(m, torch.nn.Module):
            for t in (*m.parameters(), *m.buffers()):
                total += t.numel() * t.element_size()
    return total


@dataclass
class CacheStats:
    loads: dict[str, int] = field(default_factory=dict)
    hits: int = 0
    evictions: int = 0


@dataclass
class _Entry(Generic[T]):
    value: T
    size: int


class ModelCache(Generic[T]):
    """Keeps loaded models by key, least recently used evicted first once the sum of their
    sizes would exceed `budget_bytes`. A model larger than the budget is still loaded (it is
    needed now) after everything else has been evicted."""

    def __init__(self, budget_bytes: int, on_evict: Callable[[str, T], None] | None = None):
        if budget_bytes <= 0:
            raise ValueError(f"memory budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        return list(self._entries)

    @property
    def used_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def get(
        self,
        key: str,
        loader: Callable[[], tuple[T, int]],
        size_hint: Callable[[], int] | None = None,
    ) -> T:
        """The cached value for `key`, or `loader()` -> (value, size_bytes) on a miss.

        `size_hint()` (e.g. the size of the weight files, asked on a miss only) frees room
        before loading, so the old and the new model are not both in memory at the peak.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry.value
            if size_hint is not None:
                self._make_room(size_hint())
            value, size = loader()
            self.stats.loads[key] = self.stats.loads.get(key, 0) + 1
            self._make_room(size)
            self._entries[key] = _Entry(value, size)
            log.info(
                "loaded %s (%.1f MB); cache holds %d model(s), %.1f/%.1f MB",
                key,
                size / 2**20,
                len(self._entries),
                self.used_bytes / 2**20,
                self.budget_bytes / 2**20,
            )
            return value

    def _make_room(self, size: int) -> None:
        evicted = False
        while self._entries and self.used_bytes + size > self.budget_bytes:
            key, entry = self._entries.popitem(last=False)
            self.stats.evictions += 1
            evicted = True
            log.info(
                "evicting %s (%.1f MB) to stay within the memory budget", key, entry.size / 2**20
            )
            if self._on_evict is not None:
                self._on_evict(key, entry.value)
            del entry
        if evicted:
            release_memory()

    def clear(self) -> None:
        with self._lock:
            while self._entries:
                key, entry = self._entries.popitem(last=False)
                if self._on_evict is not None:
                    self._on_evict(key, entry.value)
            release_memory()


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
