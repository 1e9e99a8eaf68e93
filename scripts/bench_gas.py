"""`ape run bench_gas`: gas of the task market, printed as a table and merged into
bench/gas.json under "market".

Measures, on the real token + registry + market:
- every step of a task's life, undrawn (create, commit, deliver: 3 transactions) and drawn
  (create, commit, deliver, 2 auditor commits, 3 disclosures), for image and text tasks;
  the total per task and the weighted total at a 10% audit rate;
- createTask that starts at once with 10, 100 and 1,000 Available nodes;
- createTask that queues, and a delivery whose freed node pulls the best queued task, with
  1, 10, 100 and 1,000 tasks queued (random fees and image counts: many value buckets);
- join and quit (the market is wired, so a join is offered work), cancel, eviction, withdraw.

Steady state: every number is the mean over several tasks after a warm-up in which every node
has been paid once (the first task ever, and a node's first credit after a withdraw, write
fresh storage slots: see `first task ever`). Bulk setup (nodes, queue filling)
goes through raw JSON-RPC batches on Anvil with auto-impersonation; measured transactions go
through Ape and report the receipt's gasUsed (21,000 intrinsic and calldata included).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import click
import requests
from ape import accounts, chain, project
from ape.cli import ConnectedProviderCommand, network_option
from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector as sel
from eth_utils import keccak

CNX = 10**18
STAKE = 400 * CNX
OUT = Path("bench/gas.json")
MODEL = keccak(text="base:stable-diffusion-v1-5")
GPU = "NVIDIA GeForce RTX 4090"
REQ_TYPES = "(uint8,bytes32,bytes32[],uint16,bytes32,uint8,uint256,bool)"
SAMPLES = 8


class Rpc:
    """Raw JSON-RPC to Anvil: batches of calls, and transactions from impersonated accounts."""

    def __init__(self, uri: str):
        self.uri = uri
        self.session = requests.Session()

    def batch(self, calls: list[tuple[str, list]]) -> list:
        out = []
        for start in range(0, len(calls), 400):
            chunk = calls[start : start + 400]
            body = [
                {"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                for i, (m, p) in enumerate(chunk)
            ]
            replies = sorted(
                self.session.post(self.uri, json=body, timeout=300).json(), key=lambda r: r["id"]
            )
            for r in replies:
                if "error" in r:
                    raise RuntimeError(r["error"])
                out.append(r["result"])
        return out

    def send_all(self, txs: list[dict], one_by_one: bool = False) -> list[dict]:
        """Sends (auto-mined), waits for the receipts, checks each succeeded. One by one when a
        sender appears more than once (Anvil may reorder a batch)."""
        for tx in txs:
            tx.setdefault("gas", hex(3_000_000))
        if one_by_one:
            hashes = [self.batch([("eth_sendTransaction", [tx])])[0] for tx in txs]
        else:
            hashes = self.batch([("eth_sendTransaction", [tx]) for tx in txs])
        deadline = time.time() + 300
        while True:
            receipts = self.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
            if all(receipts) or time.time() > deadline:
                break
            time.sleep(0.05)
        bad = [r for r in receipts if r is None or int(r["status"], 16) != 1]
        if bad:
            raise RuntimeError(f"{len(bad)} setup transactions failed or never mined")
        return receipts


def data(signature: str, types: list[str], values: list) -> str:
    return "0x" + (sel(signature) + encode(types, values)).hex()


def node_address(i: int) -> str:
    return "0x" + (0xC0000000000000000000000000000000000000 + i).to_bytes(20, "big").hex()


def request(
    fee: int, images: int = 1, text: bool = False, always: bool = False, min_vram: int = 8
) -> tuple:
    return (
        1 if text else 0,
        keccak(text=f"args:{fee}:{images}"),
        [MODEL],
        min_vram,
        b"\x00" * 32,
        0 if text else images,
        fee,
        always,
    )


class Bench:
    def __init__(self, network: str):
        self.network = network
        self.owner, self.treasury = accounts.test_accounts[0], accounts.test_accounts[1]
        self.relay, self.creator = accounts.test_accounts[4], accounts.test_accounts[2]
        self.rpc = Rpc(chain.provider.uri)
        self.rpc.batch([("anvil_autoImpersonateAccount", [True])])
        self.next_node = 0
        self.deploy()

    def deploy(self) -> None:
        o = self.owner
        self.token = o.deploy(project.CNXToken, o, self.treasury)
        self.registry = o.deploy(project.NodeRegistry, self.token, o, self.treasury)
        self.market = o.deploy(project.TaskMarket, self.token, self.registry, o)
        self.registry.setMarket(self.market, sender=o)
        self.market.grantRole(self.market.RELAY_ROLE(), self.relay, sender=o)
        self.token.transfer(self.creator, 10_000_000 * CNX, sender=self.treasury)
        self.token.approve(self.market, 2**256 - 1, sender=self.creator)

    def set_params(self, **changes) -> None:
        p = self.market.params()
        fields = dict(p.items())
        fields.update(changes)
        self.market.setParams(fields, sender=self.owner)

    # ------------------------------------------------------------------ nodes

    def add_nodes(self, count: int, gpu: str = GPU, vram: int = 24) -> list[str]:
        addrs = [node_address(self.next_node + i) for i in range(count)]
        self.next_node += count
        t = self.token.address
        self.rpc.batch([("anvil_setBalance", [a, hex(10**20)]) for a in addrs])
        self.rpc.send_all(
            [
                {
                    "from": self.treasury.address,
                    "to": t,
                    "data": data("transfer(address,uint256)", ["address", "uint256"], [a, STAKE]),
                }
                for a in addrs
            ],
            one_by_one=True,
        )
        self.rpc.send_all(
            [
                {
                    "from": a,
                    "to": t,
                    "data": data(
                        "approve(address,uint256)",
                        ["address", "uint256"],
                        [self.registry.address, STAKE],
                    ),
                }
                for a in addrs
            ]
        )
        self.rpc.send_all(
            [
                {
                    "from": a,
                    "to": self.registry.address,
                    "data": data(
                        "join(uint256,string,uint16,uint16[3],bytes32[])",
                        ["uint256", "string", "uint16", "uint16[3]", "bytes32[]"],
                        [STAKE, gpu, vram, [1, 0, 0], [MODEL]],
                    ),
                }
                for a in addrs
            ]
        )
        return addrs

    # ------------------------------------------------------------------ one task

    def create(self, req: tuple):
        tx = self.market.createTask(req, sender=self.creator)
        return tx.events.filter(self.market.TaskCreated)[0].taskId, tx

    def commit(self, task_id: int, node: str, score: bytes):
        salt = keccak(text=f"salt:{task_id}:{node}")
        c = keccak(encode(["uint256", "address", "bytes", "bytes32"], [task_id, node, score, salt]))
        tx = self.market.commit(task_id, c, sender=accounts[node])
        return tx, salt

    def score(self, task_id: int, text: bool, images: int) -> bytes:
        return (
            keccak(text=f"text:{task_id}")
            if text
            else b"".join(keccak(text=f"img:{task_id}:{i}")[:8] for i in range(images))
        )

    def undrawn_task(self, text: bool) -> dict[str, int]:
        task_id, c = self.create(request(10 * CNX, text=text))
        node = self.market.getTask(task_id).executor
        m, _ = self.commit(task_id, node, self.score(task_id, text, 1))
        d = self.market.attestDelivery(task_id, sender=self.relay)
        assert d.events.filter(self.market.TaskSettled)[0].outcome == 0
        return {"createTask": c.gas_used, "commit": m.gas_used, "attestDelivery": d.gas_used}

    def drawn_task(self, text: bool) -> dict[str, int]:
        task_id, c = self.create(request(10 * CNX, text=text))
        node = self.market.getTask(task_id).executor
        score = self.score(task_id, text, 1)
        m, salt = self.commit(task_id, node, score)
        d = self.market.attestDelivery(task_id, sender=self.relay)
        auditors = list(self.market.getTask(task_id).auditors)
        assert all(int(a, 16) for a in auditors), "the drawn task did not find two auditors"
        a1, s1 = self.commit(task_id, auditors[0], score)
        a2, s2 = self.commit(task_id, auditors[1], score)
        x1 = self.market.disclose(task_id, score, salt, sender=accounts[node])
        x2 = self.market.disclose(task_id, score, s1, sender=accounts[auditors[0]])
        x3 = self.market.disclose(task_id, score, s2, sender=accounts[auditors[1]])
        assert x3.events.filter(self.market.TaskSettled)[0].outcome == 0
        return {
            "createTask": c.gas_used,
            "commit": m.gas_used,
            "attestDelivery (draw, 2 auditors)": d.gas_used,
            "auditor commit": a1.gas_used,
            "auditor commit (opens disclosure)": a2.gas_used,
            "disclose (executor)": x1.gas_used,
            "disclose (auditor)": x2.gas_used,
            "disclose (last: settles)": x3.gas_used,
        }

    # ------------------------------------------------------------------ queue filling

    def fill_queue(self, count: int, rng: random.Random) -> None:
        txs = []
        for _ in range(count):
            fee = rng.randint(1, 1000) * CNX // 10
            txs.append(
                {
                    "from": self.creator.address,
                    "to": self.market.address,
                    "data": data(
                        f"createTask({REQ_TYPES})",
                        [REQ_TYPES],
                        [request(fee, images=rng.randint(1, 4))],
                    ),
                }
            )
        self.rpc.send_all(txs, one_by_one=True)


def mean_steps(runs: list[dict[str, int]]) -> dict[str, int]:
    return {k: round(statistics.mean(r[k] for r in runs)) for k in runs[0]}


@click.command(cls=ConnectedProviderCommand)
@network_option(default="ethereum:local:foundry")
def cli(network):
    t0 = time.time()
    b = Bench(network)
    result: dict = {}
    lines: list[str] = []

    # ---- task paths on a 10-node network
    nodes = b.add_nodes(10)
    b.set_params(auditRateBps=0)
    first = b.undrawn_task(text=False)
    result["first task ever (image, undrawn)"] = first | {"total": sum(first.values())}
    # warm-up: every node paid once (a node's first credit writes a fresh balance slot)
    while not all(b.market.balanceOf(n) for n in nodes):
        b.undrawn_task(text=False)
    paths: dict = {}
    for kind, text in (("image", False), ("text", True)):
        b.set_params(auditRateBps=0)
        und = mean_steps([b.undrawn_task(text) for _ in range(SAMPLES)])
        b.set_params(auditRateBps=10_000)
        b.drawn_task(text)  # warm-up of the auditors' slots
        drw = mean_steps([b.drawn_task(text) for _ in range(SAMPLES // 2)])
        paths[kind] = {
            "not drawn": und | {"total": sum(und.values()), "transactions": len(und)},
            "drawn": drw | {"total": sum(drw.values()), "transactions": len(drw)},
        }
        paths[kind]["weighted total at 10% audit rate"] = round(
            0.9 * paths[kind]["not drawn"]["total"] + 0.1 * paths[kind]["drawn"]["total"]
        )
    result["task paths"] = paths
    b.set_params(auditRateBps=0)

    # ---- withdraw, cancel
    node = b.market.getTask(1).executor
    result["withdraw"] = b.market.withdraw(sender=accounts[node]).gas_used

    # ---- createTask with immediate start as the network grows (undrawn, nodes freed again)
    start_by_nodes: dict = {}
    for target in (10, 100, 1000):
        if target > 10:
            b.add_nodes(target - b.registry.countsByStatus()[1])
        creates = [b.undrawn_task(text=False)["createTask"] for _ in range(SAMPLES)]
        start_by_nodes[str(target)] = round(statistics.mean(creates))
    result["createTask, immediate start, by Available nodes"] = start_by_nodes
    result["createTask ratio 1000 vs 10 nodes"] = round(
        start_by_nodes["1000"] / start_by_nodes["10"], 3
    )

    # ---- join and quit (market wired: a joining node is offered work; the queue is empty)
    user = accounts.test_accounts.generate_test_account()
    chain.provider.set_balance(user.address, 10**21)
    b.token.transfer(user, STAKE, sender=b.treasury)
    b.token.approve(b.registry, STAKE, sender=user)
    tx = b.registry.join(STAKE, GPU, 24, [1, 0, 0], [MODEL], sender=user)
    result["join (1 model)"] = tx.gas_used
    result["quit (stake returned)"] = b.registry.quit(sender=user).gas_used

    # ---- the queue: a fresh market whose 4 nodes are all busy
    b.deploy()
    b.next_node = 10_000
    workers = b.add_nodes(4)
    b.set_params(auditRateBps=0, maxQueueSize=2000)
    busy = {}
    for _ in workers:
        task_id, _ = b.create(request(CNX))
        busy[b.market.getTask(task_id).executor] = task_id
    rng = random.Random(7)
    queue: dict = {}
    for target in (1, 10, 100, 1000):
        have = b.market.queueSize()
        if target - 1 > have:
            b.fill_queue(target - 1 - have, rng)
        creates, pulls = [], []
        for _ in range(SAMPLES if target < 1000 else SAMPLES // 2):
            # createTask into a queue of target - 1 tasks: it becomes the target-th
            assert b.market.queueSize() == target - 1
            _, tx = b.create(request(rng.randint(1, 1000) * CNX // 10, images=rng.randint(1, 4)))
            creates.append(tx.gas_used)
            # a busy node delivers; freed, it pulls the best of `target` queued tasks
            node, task_id = next(iter(busy.items()))
            b.commit(task_id, node, b.score(task_id, False, b.market.getTask(task_id).numImages))
            d = b.market.attestDelivery(task_id, sender=b.relay)
            (pulled,) = d.events.filter(b.market.TaskStarted)
            assert pulled.executor == node
            pulls.append(d.gas_used)
            del busy[node]
            busy[node] = pulled.taskId
        queue[str(target)] = {
            "createTask (queues)": round(statistics.mean(creates)),
            "attestDelivery (pulls from queue)": round(statistics.mean(pulls)),
        }
    result["queue, by queued tasks"] = queue
    result["pull ratio 1000 vs 1 queued"] = round(
        queue["1000"]["attestDelivery (pulls from queue)"]
        / queue["1"]["attestDelivery (pulls from queue)"],
        3,
    )
    result["createTask (queues) ratio 1000 vs 1 queued"] = round(
        queue["1000"]["createTask (queues)"] / queue["1"]["createTask (queues)"], 3
    )
    # eviction: a full queue (1,000) and a task beating the lowest
    b.set_params(maxQueueSize=b.market.queueSize())
    _, tx = b.create(request(200 * CNX))
    assert tx.events.filter(b.market.TaskEvicted)
    result["createTask evicting from a full queue (1,000)"] = tx.gas_used
    task_id, _ = b.create(request(1000 * CNX, images=1))  # evicts once more, then cancel it
    result["cancel (queued task, refund)"] = b.market.cancel(task_id, sender=b.creator).gas_used

    # ---- print
    lines.append(
        f"\nTaskMarket gas ({network}; gasUsed per transaction; {time.time() - t0:.0f} s)\n"
    )
    for kind, p in paths.items():
        for path in ("not drawn", "drawn"):
            lines.append(f"{kind} task, {path}:")
            for step, g in p[path].items():
                if step not in ("total", "transactions"):
                    lines.append(f"  {step:44} {g:>10,}")
            lines.append(
                f"  {'total (' + str(p[path]['transactions']) + ' transactions)':44} {p[path]['total']:>10,}"
            )
        lines.append(
            f"  {'weighted total at a 10% audit rate':44} {p['weighted total at 10% audit rate']:>10,}\n"
        )
    f = result["first task ever (image, undrawn)"]
    lines.append(
        f"first task ever (cold slots), undrawn image: {f['total']:,} "
        f"(create {f['createTask']:,}, commit {f['commit']:,}, deliver {f['attestDelivery']:,})\n"
    )
    lines.append("createTask with immediate start, by Available nodes:")
    for n, g in start_by_nodes.items():
        lines.append(f"  {n:>5} nodes {g:>10,}")
    lines.append(
        f"  ratio 1000 / 10: {result['createTask ratio 1000 vs 10 nodes']} (target <= 1.3)\n"
    )
    lines.append(f"{'queued tasks':>12} {'createTask (queues)':>20} {'delivery pulling':>17}")
    for n, q in queue.items():
        lines.append(
            f"{n:>12} {q['createTask (queues)']:>20,} {q['attestDelivery (pulls from queue)']:>17,}"
        )
    lines.append(
        f"  pull ratio 1000 / 1: {result['pull ratio 1000 vs 1 queued']} (target <= 1.3)\n"
    )
    for k in (
        "createTask evicting from a full queue (1,000)",
        "cancel (queued task, refund)",
        "withdraw",
        "join (1 model)",
        "quit (stake returned)",
    ):
        lines.append(f"{k:46} {result[k]:>10,}")
    targets = {
        "not drawn image <= 350k (3 tx)": paths["image"]["not drawn"]["total"] <= 350_000,
        "weighted 10% image <= 450k": paths["image"]["weighted total at 10% audit rate"] <= 450_000,
        "createTask 1000 vs 10 nodes <= 1.3": result["createTask ratio 1000 vs 10 nodes"] <= 1.3,
        "pull 1000 vs 1 queued <= 1.3": result["pull ratio 1000 vs 1 queued"] <= 1.3,
    }
    result["targets met"] = targets
    lines.append(
        "\ntargets: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in targets.items())
    )
    click.echo("\n".join(lines))

    OUT.parent.mkdir(exist_ok=True)
    stored = json.loads(OUT.read_text()) if OUT.exists() else {}
    stored["market"] = result
    OUT.write_text(json.dumps(stored, indent=2) + "\n")
    click.echo(f"\nwritten to {OUT} (key 'market')")
