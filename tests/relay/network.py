"""Deploys token + registry + market for the relay tests and drives tasks through them."""
from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from PIL import Image

from crynux_common import scores
from scripts._network import deploy_network as deploy_contracts
from scripts._network import deployment_record
from crynux_common.schemas import TaskType, canonical_json

CNX = 10**18
MIN_STAKE = 400 * CNX
GPU = "RTX 4090"
BASE_MODEL = "base:tiny-sd"
TEXT_MODEL = "base:tiny-gpt"
NUM_EXTRA_NODES = 5


def h(text: str) -> bytes:
    return keccak(text.encode())


def png(seed: int, size: int = 64) -> bytes:
    """A deterministic PNG with structure (so pHashes differ between seeds)."""
    rnd = random.Random(seed)
    img = Image.new("RGB", (size, size))
    px = img.load()
    fx, fy = rnd.randint(1, 6), rnd.randint(1, 6)
    for y in range(size):
        for x in range(size):
            px[x, y] = ((x * fx * 7 + seed) % 256, (y * fy * 5) % 256, ((x + y) * 3 + seed * 11) % 256)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def noise_png(seed: int, width: int, height: int) -> bytes:
    """A PNG of random noise (incompressible: its size is about width x height x 3)."""
    img = Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=0)
    return out.getvalue()


def image_args(seed: int, num_images: int = 1, size: int = 64) -> bytes:
    """Arguments of ``num_images`` square images of ``size`` pixels (the relay accepts result
    PNGs of exactly that size)."""
    return canonical_json({
        "version": "1.0", "base_model": BASE_MODEL, "prompt": f"a test picture {seed}", "negative_prompt": "",
        "task_config": {"image_width": size, "image_height": size, "steps": 4, "seed": seed,
                        "num_images": num_images, "cfg": 7},
    })


def text_args(seed: int) -> bytes:
    return canonical_json({
        "version": "1.0", "model": TEXT_MODEL, "messages": [{"role": "user", "content": f"hello {seed}"}],
        "generation_config": {"max_new_tokens": 8, "do_sample": False}, "seed": seed,
    })


@dataclass
class Network:
    rpc_url: str
    contracts: dict[str, Any]
    token: Any
    registry: Any
    market: Any
    owner: Any
    creator: Any  # ape account of the application
    other_app: Any  # a second application (not the creator of anything it asks for)
    nodes: list[Any]
    relay_key: str
    keys: dict[str, LocalAccount] = field(default_factory=dict)
    _seed: int = 0

    def local(self, ape_account: Any) -> LocalAccount:
        """The eth-account signer of an Ape test account (for signing relay requests)."""
        return self.keys[ape_account.address]

    def ape_account(self, address: str) -> Any:
        for a in [self.creator, self.other_app, *self.nodes]:
            if a.address.lower() == address.lower():
                return a
        raise KeyError(address)

    def write_deployment(self, path: Path) -> Path:
        """The project's deployment file (crynux_common.deployment), as the deploy script writes it."""
        deployment_record("local-test", self.contracts).save(path)
        return path

    def next_seed(self) -> int:
        self._seed += 1
        return self._seed

    def create_task(self, args: bytes, *, task_type: TaskType = TaskType.IMAGE, num_images: int = 1,
                    always_audit: bool = False, creator: Any = None, fee: int = 10 * CNX) -> int:
        model = BASE_MODEL if task_type == TaskType.IMAGE else TEXT_MODEL
        req = (int(task_type), keccak(args), [h(model)], 8, b"\x00" * 32,
               num_images if task_type == TaskType.IMAGE else 0, fee, always_audit)
        receipt = self.market.createTask(req, sender=creator or self.creator)
        created = [log for log in receipt.decode_logs() if log.event_name == "TaskCreated"]
        return int(created[0].taskId)

    def task(self, task_id: int) -> Any:
        return self.market.getTask(task_id)

    def executor(self, task_id: int) -> Any:
        return self.ape_account(self.task(task_id).executor)

    def chain_sleep(self, seconds: int) -> None:
        """Moves the chain's clock forward (a mined block `seconds` later)."""
        from ape import chain

        chain.mine(1, timestamp=chain.pending_timestamp + seconds)

    def commit(self, task_id: int, node: Any, score: bytes, salt: bytes) -> None:
        self.market.commit(task_id, scores.commitment(task_id, node.address, score, salt), sender=node)


def deploy_network(project: Any, accounts: Any, owner: Any, treasury: Any, rpc_url: str) -> Network:
    """The whole network as scripts/_network.py deploys it (the deploy script's own code),
    with audit draws off; ten nodes joined, two funded applications, accounts[9] the relay."""
    relay = accounts[9]
    contracts = deploy_contracts(project, owner, treasury=treasury.address, relay=relay.address,
                                 params={"market": {"auditRateBps": 0}})  # deterministic: no random audits
    token, registry, market = contracts["CNXToken"], contracts["NodeRegistry"], contracts["TaskMarket"]
    creator, other_app = accounts[2], accounts[8]
    nodes = [accounts[i] for i in range(3, 8)]
    for _ in range(NUM_EXTRA_NODES):  # more nodes than the mnemonic's funded accounts
        extra = accounts.generate_test_account()
        owner.transfer(extra, 10 * 10**18)
        nodes.append(extra)
    for app in (creator, other_app):
        token.transfer(app, 100_000 * CNX, sender=treasury)
        token.approve(market, 2**256 - 1, sender=app)
    for node in nodes:
        token.transfer(node, 1_000 * CNX, sender=treasury)
        token.approve(registry, 2**256 - 1, sender=node)
        registry.join(MIN_STAKE, GPU, 24, [1, 0, 0], [h(BASE_MODEL), h(TEXT_MODEL)], sender=node)
    keys = {a.address: Account.from_key(a.private_key) for a in [creator, other_app, *nodes]}
    return Network(rpc_url=rpc_url, contracts=contracts, token=token, registry=registry, market=market,
                   owner=owner, creator=creator, other_app=other_app, nodes=nodes, relay_key=relay.private_key,
                   keys=keys)
