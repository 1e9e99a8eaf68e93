"""Fixtures for the node registry tests: a registry wired to the CNX token, a test account
standing in for the task market (it may call lockRandom/lock/release/settle/slash), funded
node accounts and helpers to join them."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from eth_utils import keccak

from tests.conftest import CNX

MIN_STAKE = 400 * CNX
QOS_ONE = 10**6
VERSION = (1, 0, 0)


def h(text: str) -> bytes:
    """keccak256 of a string, as GPU names and model IDs are kept on-chain."""
    return keccak(text.encode())


@dataclass(frozen=True)
class Req:
    """INodeRegistry.Requirement as a tuple builder."""

    min_vram: int = 0
    gpu: bytes = b"\x00" * 32
    local_model: bytes = b"\x00" * 32

    def t(self) -> tuple[int, bytes, bytes]:
        return (self.min_vram, self.gpu, self.local_model)


@pytest.fixture(scope="session")
def market(accounts):
    """accounts[9] plays the task market (an EOA, so no onNodeAvailable callback)."""
    return accounts[9]


@pytest.fixture(scope="session")
def registry(project, owner, treasury, token, market):
    reg = owner.deploy(project.NodeRegistry, token, owner, treasury)
    reg.setMarket(market, sender=owner)
    return reg


@pytest.fixture(scope="session")
def nodes(accounts, token, treasury, registry):
    """accounts[2..8], each funded with 10,000 CNX and approving the registry."""
    out = [accounts[i] for i in range(2, 9)]
    for a in out:
        token.transfer(a, 10_000 * CNX, sender=treasury)
        token.approve(registry, 2**256 - 1, sender=a)
    return out


@pytest.fixture
def join(registry):
    """join(node, gpu="RTX 4090", vram=24, models=(), stake=MIN_STAKE, version=VERSION)."""

    def _join(node, gpu: str = "RTX 4090", vram: int = 24, models=(), stake: int = MIN_STAKE, version=VERSION):
        return registry.join(stake, gpu, vram, list(version), [h(m) for m in models], sender=node)

    return _join
