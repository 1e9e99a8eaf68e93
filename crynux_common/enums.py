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
