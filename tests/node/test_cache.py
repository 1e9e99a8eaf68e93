"""The warm model cache: LRU order under a memory budget."""
from __future__ import annotations

import pytest
import torch

from node_client.inference.cache import ModelCache, module_bytes


def loader(name: str, size: int, log: list[str]):
    def load():
        log.append(name)
        return name, size

    return load


def test_get_missLoadsHitReuses():
    cache: ModelCache[str] = ModelCache(100)
    log: list[str] = []
    assert cache.get("a", loader("a", 10, log)) == "a"
    assert cache.get("a", loader("a", 10, log)) == "a"
    assert log == ["a"] and cache.stats.loads == {"a": 1} and cache.stats.hits == 1


def test_get_evictsLeastRecentlyUsedFirst():
    evicted: list[str] = []
    cache: ModelCache[str] = ModelCache(100, on_evict=lambda k, v: evicted.append(k))
    log: list[str] = []
    cache.get("a", loader("a", 40, log))
    cache.get("b", loader("b", 40, log))
    cache.get("a", loader("a", 40, log))  # a is now the most recent
    cache.get("c", loader("c", 40, log))
    assert evicted == ["b"] and cache.keys() == ["a", "c"]
    assert cache.used_bytes == 80


def test_get_sizeHintFreesRoomBeforeLoading():
    cache: ModelCache[str] = ModelCache(100)
    seen_keys: list[list[str]] = []

    def load():
        seen_keys.append(cache.keys())
        return "big", 90

    cache.get("small", lambda: ("small", 30))
    cache.get("big", load, size_hint=lambda: 90)
    assert seen_keys == [[]]  # "small" was gone before "big" was loaded


def test_get_modelLargerThanBudgetStillLoads():
    cache: ModelCache[str] = ModelCache(10)
    cache.get("a", lambda: ("a", 5))
    assert cache.get("huge", lambda: ("huge", 50)) == "huge"
    assert cache.keys() == ["huge"] and cache.stats.evictions == 1


def test_clear_unloadsEverything():
    evicted: list[str] = []
    cache: ModelCache[str] = ModelCache(100, on_evict=lambda k, v: evicted.append(k))
    cache.get("a", lambda: ("a", 1))
    cache.get("b", lambda: ("b", 1))
    cache.clear()
    assert cache.keys() == [] and evicted == ["a", "b"]


def test_cache_failsIfBudgetNotPositive():
    with pytest.raises(ValueError):
        ModelCache(0)


def test_moduleBytes_countsParametersAndBuffers():
    lin = torch.nn.Linear(10, 20)  # 200 + 20 float32
    bn = torch.nn.BatchNorm1d(4)  # 8 params + 8 running stats float32 + 1 int64
    assert module_bytes([lin, "not a module", bn]) == 220 * 4 + 16 * 4 + 8
