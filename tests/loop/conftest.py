"""Fixtures of the node-loop tests: tiny models, a deployed network and a relay per module."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from .harness import Network

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: Market parameters of a module (override `market_params` in a test module).
DEFAULT_MARKET_PARAMS = {"auditRateBps": 0}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models the tasks use, built once for the session."""
    from node_client import tiny_models

    cache = tmp_path_factory.mktemp("tiny-models")
    for mid in ("base:tiny-sd", "base:tiny-gpt2"):
        tiny_models.materialize(mid, cache)
    return cache


@pytest.fixture
def _function_isolation():  # type: ignore[no-untyped-def]
    """No chain snapshot/revert around each test here: relay and node processes keep state
    outside the chain. Ape's module isolation still reverts what a module did when it ends."""
    yield


@pytest.fixture(scope="module")
def market_params() -> dict[str, int]:
    return dict(DEFAULT_MARKET_PARAMS)


@pytest.fixture(scope="module")
def net(project, accounts, owner, treasury, rpc_url, tiny_cache, market_params,  # type: ignore[no-untyped-def]
        tmp_path_factory) -> Iterator[Network]:
    """The whole network deployed by scripts/_network.py, a relay process in front of it and a
    funded application; the module's nodes are created by the tests (net.new_node)."""
    from scripts._network import deploy_network, deployment_record
    from tests.relay.helpers import RelayProcess

    root = tmp_path_factory.mktemp("loop")
    relay_account = accounts[9]
    contracts = deploy_network(project, owner, treasury=treasury.address, relay=relay_account.address,
                               params={"market": market_params})
    deployment = root / "deployment.json"
    deployment_record("local", contracts).save(deployment)
    creator = accounts[2]
    contracts["CNXToken"].transfer(creator, 100_000 * 10**18, sender=treasury)
    contracts["CNXToken"].approve(contracts["TaskMarket"], 2**256 - 1, sender=creator)
    relay = RelayProcess(rpc=rpc_url, deployment=deployment, data=root / "relay", key=relay_account.private_key)
    relay.start()
    network = Network(
        project=project, contracts=contracts, owner=owner, treasury=treasury, creator=creator,
        creator_key=Account.from_key(creator.private_key), relay_url=relay.url, deployment_path=deployment,
        rpc_url=rpc_url, tiny_cache=tiny_cache, root=root,
    )
    try:
        yield network
    finally:
        network.stop_all()
        relay.stop()
