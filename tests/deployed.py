"""The contracts of a network deployed by `scripts._network.deploy_network`, by role."""
from __future__ import annotations

from typing import Any


class DeployedContracts:
    """Shortcuts over `contracts` (name -> Ape contract instance) for the process harnesses."""

    contracts: dict[str, Any]

    @property
    def market(self) -> Any:
        return self.contracts["TaskMarket"]

    @property
    def registry(self) -> Any:
        return self.contracts["NodeRegistry"]

    @property
    def token(self) -> Any:
        return self.contracts["CNXToken"]
