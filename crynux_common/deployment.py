"""The deployment file: where the contracts of one network live, with their ABIs.

`scripts/deploy.py` writes `deployments/<network>.json`; the relay, the node client and
the SDK read it, so none of them needs Ape or the compiled project at run time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from web3 import Web3
from web3.contract import Contract


class DeploymentError(Exception):
    """The deployment file is missing, malformed or lacks a contract."""


class DeployedContract(BaseModel):
    address: str
    abi: list[dict[str, Any]]


class Deployment(BaseModel):
    """Addresses and ABIs of one network's contracts."""

    network: str
    chain_id: int
    block: int = Field(0, description="Block of the first deployment transaction (log scans start here).")
    contracts: dict[str, DeployedContract]

    @classmethod
    def load(cls, path: str | Path) -> "Deployment":
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except FileNotFoundError as exc:
            raise DeploymentError(f"deployment file not found: {path}") from exc
        except (ValueError, TypeError) as exc:
            raise DeploymentError(f"deployment file {path} is malformed: {exc}") from exc

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)

    def contract(self, w3: Web3, name: str) -> Contract:
        """A web3 contract object for `name` (e.g. "TaskMarket")."""
        try:
            entry = self.contracts[name]
        except KeyError as exc:
            raise DeploymentError(f"{name} is not in the deployment of {self.network}") from exc
        return w3.eth.contract(address=Web3.to_checksum_address(entry.address), abi=entry.abi)
