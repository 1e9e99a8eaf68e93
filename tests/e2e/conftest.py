"""End-to-end fixtures: the whole network as real processes.

Anvil (started by ape-foundry), the contracts deployed by scripts/_network.py, the relay
(`python -m relay_client.cli serve`) and node processes (`python -m node_client.cli run`)
managed by scripts/_localnet.py, and an application using the SDK over HTTP. Nothing of
ours is mocked. Short protocol timeouts (params) keep the fault tests fast.

Nodes are grouped by the GPU name they declare; a task that requires a GPU can only go to
that group, so each test picks exactly which nodes may take its tasks.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from tests.deployed import DeployedContracts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CNX = 10**18
ETH = 10**18
HONEST = "E2E-HONEST"  # three honest nodes
CHEAT = "E2E-CHEAT"  # one cheater first, two honest auditors joined later
VRAM = 8  # every node declares 8 GB; a task naming a GPU must name the exact VRAM

#: Short protocol times: T = 2 s + 1 s per image (1 s text); execution timeout 30 s.
E2E_PARAMS = {
    "market": {
        "nonGenerationTime": 2, "secondsPerImage": 1, "textGenerationTime": 1, "minTimeout": 30,
        "timeoutFactor": 1, "auditRateBps": 0, "auditWindow": 90, "discloseWindow": 40,
    },
}


@dataclass
class E2E(DeployedContracts):
    """A deployed network, its processes and a funded application with the SDK."""

    contracts: dict[str, Any]
    net: Any  # scripts._localnet.LocalNet
    client: Any  # relay_client.CrynuxClient
    app: LocalAccount
    owner: Any
    treasury: Any
    groups: dict[str, list[Any]] = field(default_factory=dict)

    def fund(self, address: str, cnx: int) -> None:
        self.owner.transfer(address, 10 * ETH)
        if cnx:
            self.token.transfer(address, cnx, sender=self.treasury)

    def add_nodes(self, group: str, count: int, *, start: bool = True, **node_cfg: Any) -> list[Any]:
        """New funded, joined and (by default) running nodes declaring the GPU `group`."""
        nodes = []
        for _ in range(count):
            name = f"{group.lower()}-{len(self.groups.get(group, [])) + 1}"
            node = self.net.add_node(name, Account.create(), gpu=group, vram_gb=VRAM, **node_cfg)
            self.groups.setdefault(group, []).append(node)
            self.fund(node.address, 1_000 * CNX)
            nodes.append(node)
        self.net.join(*nodes)
        if start:
            for node in nodes:
                self.net.start_node(node)
            self.net.wait_ready(nodes, timeout=180)
        return nodes

    def image(self, seed: int, *, size: int = 64, steps: int = 2, num_images: int = 1) -> dict[str, Any]:
        return {"base_model": "base:tiny-sd", "prompt": f"a lighthouse at dusk {seed}",
                "task_config": {"image_width": size, "image_height": size, "steps": steps, "seed": seed,
                                "num_images": num_images, "cfg": 7.0}}

    def text(self, seed: int) -> dict[str, Any]:
        return {"model": "base:tiny-gpt2", "messages": [{"role": "user", "content": f"tell me about {seed}"}],
                "generation_config": {"max_new_tokens": 8, "min_new_tokens": 8}, "seed": seed}

    def logs(self) -> str:
        parts = []
        for p in sorted(self.net.logs_dir.glob("*.log")):
            parts.append(f"--- {p.name} ---\n{p.read_text(errors='replace')[-2500:]}")
        return "\n".join(parts)


@pytest.fixture
def _function_isolation():  # type: ignore[no-untyped-def]
    """No chain snapshot/revert around each test: the relay and the nodes keep state outside
    the chain, so the chain must not move back under them."""
    yield


@pytest.fixture(scope="module")
def e2e(project, owner, treasury, rpc_url, tmp_path_factory) -> Iterator[E2E]:  # type: ignore[no-untyped-def]
    """The network, a relay and three honest nodes (GPU E2E-HONEST); the application's client."""
    from relay_client import CrynuxClient
    from scripts._localnet import LocalNet
    from scripts._network import deploy_network, deployment_record

    root = tmp_path_factory.mktemp("e2e")
    relay_key = Account.create()
    contracts = deploy_network(project, owner, treasury=treasury.address, relay=relay_key.address,
                               params=E2E_PARAMS)
    deployment = root / "deployment.json"
    deployment_record("local", contracts).save(deployment)
    net = LocalNet(rpc_url, deployment, root, poll_interval=0.1)
    app = Account.create()
    env = E2E(contracts, net, None, app, owner, treasury)
    try:
        env.fund(relay_key.address, 0)
        env.fund(app.address, 10_000 * CNX)
        net.start_relay(relay_key.key.hex())
        env.add_nodes(HONEST, 3)
        env.client = CrynuxClient(rpc_url, deployment, net.relay_url, app, poll_interval=0.05, progress=False,
                                  relay_retry=40)
        yield env
    finally:
        if env.client is not None:
            env.client.close()
        net.stop()


def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """Keep the process logs of a failed test (they explain most failures)."""
    if call.excinfo is not None and "e2e" in item.fixturenames:
        env = item.funcargs.get("e2e")
        if env is not None:
            item.add_report_section(call.when, "process logs", env.logs())
