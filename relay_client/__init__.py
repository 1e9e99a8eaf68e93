"""The relay service and the dApp SDK.

    from relay_client import CrynuxClient      # the application SDK (relay_client.sdk)
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "CrynuxClient", "CrynuxError", "InsufficientBalance", "RelayUnreachable", "TaskAborted", "TaskTimeout",
]


def __getattr__(name: str) -> Any:  # lazy: the relay server does not need the SDK's imports
    if name in __all__:
        from . import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'relay_client' has no attribute {name!r}")
