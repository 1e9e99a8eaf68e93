"""Deploys and wires every contract of the network (used by `deploy`, `demo` and tests).

Order: token, registry, market, node mining, task mining; then the roles: the market
becomes the registry's market, the emission contracts become minters and take reports
from the registry and the market, the relay gets RELAY_ROLE. Parameters come from a
YAML file (config/params.yaml), applied over the contracts' defaults.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from ape import chain

from crynux_common.deployment import DeployedContract, Deployment

CONTRACTS = ("CNXToken", "NodeRegistry", "TaskMarket", "NodeMining", "TaskMining")


class ParamsError(ValueError):
    """The parameter file names a parameter the contract does not have."""


DEFAULT_MIN_MINING_FEE = 10**18  # 1 CNX


def load_params(path: str | Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of contract -> parameters")
    return data


def _apply_params(contract: Any, overrides: dict[str, Any], sender: Any) -> None:
    """Reads the contract's Params struct, overrides the given fields, writes it back."""
    if not overrides:
        return
    current = contract.params()
    fields = dict(current.items()) if hasattr(current, "items") else current.__dict__
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ParamsError(f"unknown parameters for {contract.contract_type.name}: {sorted(unknown)}")
    fields.update(overrides)
    contract.setParams(fields, sender=sender)


def deploy_network(
    project: Any,
    deployer: Any,
    *,
    treasury: str,
    relay: str,
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Deploys everything with `deployer` as admin; returns the contract instances by name."""
    params = params or {}
    start_block = chain.blocks.head.number + 1
    token = deployer.deploy(project.CNXToken, deployer, treasury)
    registry = deployer.deploy(project.NodeRegistry, token, deployer, treasury)
    market = deployer.deploy(project.TaskMarket, token, registry, deployer)
    now = chain.pending_timestamp
    node_mining = deployer.deploy(project.NodeMining, token, deployer, now)
    task_mining = deployer.deploy(project.TaskMining, token, deployer, now)

    registry.setMarket(market, sender=deployer)
    market.grantRole(market.RELAY_ROLE(), relay, sender=deployer)
    for miner in (node_mining, task_mining):
        token.grantRole(token.MINTER_ROLE(), miner, sender=deployer)
    node_mining.grantRole(node_mining.REPORTER_ROLE(), registry, sender=deployer)
    task_mining.grantRole(task_mining.REPORTER_ROLE(), market, sender=deployer)
    registry.setNodeMining(node_mining, sender=deployer)
    # Task mining counts tasks of at least this fee (docs/security.md: wash trading).
    min_mining_fee = int(params.get("emission", {}).get("minMiningFee", DEFAULT_MIN_MINING_FEE))
    market.setEmission(task_mining, min_mining_fee, sender=deployer)

    _apply_params(registry, params.get("registry", {}), deployer)
    _apply_params(market, params.get("market", {}), deployer)
    contracts = {
        "CNXToken": token,
        "NodeRegistry": registry,
        "TaskMarket": market,
        "NodeMining": node_mining,
        "TaskMining": task_mining,
    }
    contracts["_start_block"] = start_block
    return contracts


def deployment_record(network_name: str, contracts: dict[str, Any]) -> Deployment:
    """The deployment file content (addresses and ABIs) for the clients."""
    entries = {
        name: DeployedContract(
            address=str(c.address),
            abi=[json.loads(item.model_dump_json(by_alias=True)) for item in c.contract_type.abi],
        )
        for name, c in contracts.items()
        if not name.startswith("_")
    }
    return Deployment(
        network=network_name,
        chain_id=chain.chain_id,
        block=contracts.get("_start_block", 0),
        contracts=entries,
    )
