"""Fixtures for the task market tests: token + registry + market wired together, funded
creators and nodes, and helpers that speak the market's conventions (commitments, scores)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from eth_abi import encode
from eth_utils import keccak

from crynux_common.enums import TaskType
from tests.conftest import CNX

MIN_STAKE = 400 * CNX
VERSION = (1, 0, 0)
ZERO32 = b"\x00" * 32
GPU = "RTX 4090"
BASE_MODEL = "base:sd15"


def h(text: str) -> bytes:
    """keccak256 of a string: model IDs and GPU names as the chain keeps them."""
    return keccak(text.encode())


def commitment(task_id: int, node: str, score: bytes, salt: bytes) -> bytes:
    """keccak256(abi.encode(uint256 taskId, address node, bytes score, bytes32 salt))."""
    return keccak(encode(["uint256", "address", "bytes", "bytes32"], [task_id, node, score, salt]))


def image_score(num_images: int, seed: int) -> bytes:
    """A deterministic pseudo pHash score: 8 bytes per image."""
    return b"".join(keccak(f"{seed}:{i}".encode())[:8] for i in range(num_images))


def flip_bits(score: bytes, bits: int) -> bytes:
    """The score with the lowest `bits` bits of every 8-byte pHash flipped."""
    out = bytearray(score)
    for off in range(0, len(out), 8):
        word = int.from_bytes(out[off : off + 8], "big") ^ ((1 << bits) - 1)
        out[off : off + 8] = word.to_bytes(8, "big")
    return bytes(out)


@dataclass
class Request:
    """ITaskMarket.TaskRequest with test defaults (a one-image task, 10 CNX)."""

    task_type: TaskType = TaskType.IMAGE
    args_hash: bytes = field(default_factory=lambda: h("args"))
    model_ids: tuple[bytes, ...] = (h(BASE_MODEL),)
    min_vram: int = 8
    required_gpu: bytes = ZERO32
    num_images: int = 1
    fee: int = 10 * CNX
    always_audit: bool = False

    def t(self) -> tuple:
        return (
            int(self.task_type),
            self.args_hash,
            list(self.model_ids),
            self.min_vram,
            self.required_gpu,
            self.num_images,
            self.fee,
            self.always_audit,
        )

    @property
    def escrow(self) -> int:
        return self.fee * (3 if self.always_audit else 1)


@pytest.fixture(scope="session")
def relay(accounts):
    """Holds RELAY_ROLE (attests deliveries)."""
    return accounts[4]


@pytest.fixture(scope="session")
def creators(accounts, token, treasury):
    """accounts[2], [3], [5]: applications with 1,000,000 CNX each."""
    out = [accounts[2], accounts[3], accounts[5]]
    for a in out:
        token.transfer(a, 1_000_000 * CNX, sender=treasury)
    return out


@pytest.fixture(scope="session")
def registry(project, owner, treasury, token):
    return owner.deploy(project.NodeRegistry, token, owner, treasury)


@pytest.fixture(scope="session")
def market(project, owner, token, registry, relay, creators):
    m = owner.deploy(project.TaskMarket, token, registry, owner)
    registry.setMarket(m, sender=owner)
    m.grantRole(m.RELAY_ROLE(), relay, sender=owner)
    for c in creators:
        token.approve(m, 2**256 - 1, sender=c)
    return m


@pytest.fixture(scope="session")
def node_pool(accounts, token, treasury, registry, chain):
    """12 generated node accounts with ETH for gas, 10,000 CNX and an approval to the registry."""
    out = []
    for _ in range(12):
        a = accounts.generate_test_account()
        chain.provider.set_balance(a.address, 10**21)
        token.transfer(a, 10_000 * CNX, sender=treasury)
        token.approve(registry, 2**256 - 1, sender=a)
        out.append(a)
    return out


@pytest.fixture(scope="session")
def nodes(node_pool, market):
    """The node accounts, once the market exists (so joining nodes are offered work)."""
    return node_pool


class Helpers:
    """Actions on the wired contracts, as a node, an application or the relay would do them."""

    def __init__(self, market, registry, token, relay, chain, owner):
        self.market = market
        self.registry = registry
        self.token = token
        self.relay = relay
        self.chain = chain
        self.owner = owner

    # nodes
    def join(
        self, node, gpu: str = GPU, vram: int = 24, models=(BASE_MODEL,), stake: int = MIN_STAKE
    ):
        return self.registry.join(
            stake, gpu, vram, list(VERSION), [h(m) for m in models], sender=node
        )

    # applications
    def create(self, creator, req: Request | None = None, **kw):
        req = req or Request(**kw)
        tx = self.market.createTask(req.t(), sender=creator)
        task_id = tx.events.filter(self.market.TaskCreated)[0].taskId
        return task_id, tx

    # the task lifecycle
    def commit(self, task_id: int, node, score: bytes, salt: bytes | None = None):
        salt = salt or keccak(f"salt:{task_id}:{node.address}".encode())
        return self.market.commit(
            task_id, commitment(task_id, node.address, score, salt), sender=node
        ), salt

    def deliver(self, task_id: int):
        return self.market.attestDelivery(task_id, sender=self.relay)

    def disclose(self, task_id: int, node, score: bytes, salt: bytes):
        return self.market.disclose(task_id, score, salt, sender=node)

    def task(self, task_id: int):
        return self.market.getTask(task_id)

    # governance and time
    def set_params(self, **changes):
        fields = dict(self.market.params().items())
        fields.update(changes)
        return self.market.setParams(fields, sender=self.owner)

    def travel(self, seconds: int):
        """Mine one block `seconds` later."""
        self.chain.mine(1, timestamp=self.chain.pending_timestamp + seconds)


@pytest.fixture(scope="session")
def helpers(market, registry, token, relay, chain, owner):
    return Helpers(market, registry, token, relay, chain, owner)


def by_address(accounts_list, address: str):
    for a in accounts_list:
        if a.address.lower() == str(address).lower():
            return a
    raise KeyError(address)
