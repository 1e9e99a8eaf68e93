"""Python mirrors of the contracts' enums (values must match the Solidity declarations)."""
from __future__ import annotations

from enum import IntEnum


class NodeStatus(IntEnum):
    """INodeRegistry.NodeStatus."""

    NONE = 0
    AVAILABLE = 1
    BUSY = 2
    PENDING_PAUSE = 3
    PAUSED = 4
    PENDING_QUIT = 5
    QUIT = 6


# ---------------------------------------------------------------- task market (ITaskMarket)


class TaskType(IntEnum):
    """ITaskMarket.TaskType."""

    IMAGE = 0
    TEXT = 1


class TaskStatus(IntEnum):
    """ITaskMarket.TaskStatus. SUCCESS, REFUNDED, CANCELLED, EVICTED and EXPIRED are final."""

    NONE = 0
    QUEUED = 1
    STARTED = 2
    COMMITTED = 3
    AUDITING = 4
    DISCLOSING = 5
    SUCCESS = 6
    REFUNDED = 7
    CANCELLED = 8
    EVICTED = 9
    EXPIRED = 10

    @property
    def is_final(self) -> bool:
        return self >= TaskStatus.SUCCESS


class Outcome(IntEnum):
    """ITaskMarket.Outcome, carried by the TaskSettled event."""

    SUCCESS = 0
    EXECUTOR_SLASHED = 1
    NO_CONSENSUS = 2
    NOT_COMMITTED = 3
    NOT_DELIVERED = 4


class SlashReason(IntEnum):
    """ITaskMarket.SlashReason, carried by the market's NodeSlashed event."""

    DISAGREED = 0
    NO_COMMIT = 1
    NO_DISCLOSURE = 2
