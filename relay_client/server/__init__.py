"""The relay's HTTP server (FastAPI)."""
from .app import create_app
from .settings import RelaySettings

__all__ = ["RelaySettings", "create_app"]
