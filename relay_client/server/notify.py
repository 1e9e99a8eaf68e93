"""Wakes the results requests that wait (long polling) for a task's delivery."""
from __future__ import annotations

import asyncio


class DeliveryNotifier:
    """One event per task with waiters, set when this process stores the task's delivery.

    Lives on the server's event loop: `wait` and `notify` are called from async routes only.
    """

    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}
        self._waiters: dict[int, int] = {}

    async def wait(self, task_id: int, timeout: float) -> bool:
        """Waits up to `timeout` seconds for `notify(task_id)`; True when notified."""
        event = self._events.setdefault(task_id, asyncio.Event())
        self._waiters[task_id] = self._waiters.get(task_id, 0) + 1
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            left = self._waiters[task_id] - 1
            if left:
                self._waiters[task_id] = left
            else:
                del self._waiters[task_id]
                self._events.pop(task_id, None)

    def notify(self, task_id: int) -> None:
        event = self._events.get(task_id)
        if event is not None:
            event.set()

    @property
    def waiting(self) -> int:
        """How many tasks have a waiting request."""
        return len(self._events)


class CreatorCache:
    """Task id -> creator address, bounded (a task's creator never changes)."""

    def __init__(self, capacity: int = 65_536) -> None:
        self._capacity = capacity
        self._creators: dict[int, str] = {}

    def get(self, task_id: int) -> str | None:
        return self._creators.get(task_id)

    def put(self, task_id: int, creator: str) -> None:
        if len(self._creators) >= self._capacity:
            self._creators.pop(next(iter(self._creators)))  # the oldest entry
        self._creators[task_id] = creator
