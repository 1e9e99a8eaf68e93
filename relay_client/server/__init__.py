"""The relay's HTTP server (FastAPI).

`create_app` and `RelaySettings` are loaded on first use, so that importing the wire schemas
(`relay_client.server.schemas`, which the SDK and the node share) does not load FastAPI.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .settings import RelaySettings

__all__ = ["RelaySettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "RelaySettings":
        from .settings import RelaySettings

        return RelaySettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
