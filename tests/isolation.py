"""Chain isolation for tests that run many examples inside one test function."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def isolated(chain: Any) -> Iterator[None]:
    """Snapshot, run, restore. Ape's chain.isolate() swallows every exception raised inside
    it, so an assertion failing inside it would pass silently: use this instead."""
    snapshot = chain.snapshot()
    try:
        yield
    finally:
        chain.restore(snapshot)
