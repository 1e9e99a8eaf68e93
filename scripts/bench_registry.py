"""`ape run bench_registry`: gas of the node registry, printed as a table and merged into
bench/gas.json under "registry".

Measures join (2 models), joinWithPermit, pause, resume, quit, and lockRandom + release with
10, 100 and 1,000 registered nodes (the same 4 hardware groups at every size, so only the node
count changes), then with 32 hardware groups (the default maxGroups) to show the per-group cost.
Nodes are set up through raw JSON-RPC batches on Anvil with auto-impersonation (no keys, no
per-transaction Python overhead); the measured transactions go through Ape.

Gas columns: `tx` is the receipt's gasUsed; `exec` subtracts the intrinsic cost (21,000 plus
calldata), i.e. what the call costs when the task market makes it from inside its own
transaction (add 2,600 for the cold account access of the registry, once per transaction).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click
import requests
from ape import accounts, chain, project
from ape.cli import ConnectedProviderCommand, network_option
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import function_signature_to_4byte_selector as sel
from eth_utils import keccak

CNX = 10**18
STAKE = 400 * CNX
ZERO = "0x" + "00" * 20
HARDWARE = [("NVIDIA GeForce RTX 4090", 24), ("NVIDIA GeForce RTX 3090", 24), ("NVIDIA GeForce RTX 3060", 12),
            ("NVIDIA A100-SXM4-80GB", 80)]
MODELS = [keccak(text="base:stable-diffusion-v1-5"), keccak(text="lora:pixel-art")]
CYCLES = 30  # lockRandom + release cycles per measurement
OUT = Path("bench/gas.json")


class Rpc:
    """Raw JSON-RPC to the provider, in batches."""

    def __init__(self, uri: str):
        self.uri = uri
        self.session = requests.Session()

    def batch(self, calls: list[tuple[str, list]]) -> list:
        out = []
        for start in range(0, len(calls), 400):
            chunk = calls[start : start + 400]
            body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(chunk)]
            replies = sorted(self.session.post(self.uri, json=body, timeout=300).json(), key=lambda r: r["id"])
            for r in replies:
                if "error" in r:
                    raise RuntimeError(r["error"])
                out.append(r["result"])
        return out

    def send_all(self, txs: list[dict], batched: bool = True) -> None:
        """Send transactions (auto-mined), wait for every receipt and check each succeeded.
        Batched only when every sender appears once (Anvil may reorder a batch)."""
        if batched:
            hashes = self.batch([("eth_sendTransaction", [tx]) for tx in txs])
        else:
            hashes = [self.batch([("eth_sendTransaction", [tx])])[0] for tx in txs]
        deadline = time.time() + 120
        while True:
            receipts = self.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
            if all(receipts) or time.time() > deadline:
                break
            time.sleep(0.2)
        if not all(receipts):
            raise RuntimeError(f"{sum(r is None for r in receipts)} setup transactions never mined")
        bad = [r["transactionHash"] for r in receipts if int(r["status"], 16) != 1]
        if bad:
            raise RuntimeError(f"{len(bad)} setup transactions failed, e.g. {bad[0]}")


def calldata(signature: str, types: list[str], values: list) -> str:
    return "0x" + (sel(signature) + encode(types, values)).hex()


def intrinsic(tx) -> int:
    data = bytes(tx.transaction.data)
    return 21_000 + sum(16 if b else 4 for b in data)


def node_address(i: int) -> str:
    return "0x" + (0xB0000000000000000000000000000000000000 + i).to_bytes(20, "big").hex()


def add_nodes(rpc: Rpc, token, registry, treasury, start: int, count: int, hardware=HARDWARE) -> None:
    addrs = [node_address(i) for i in range(start, start + count)]
    rpc.batch([("anvil_setBalance", [a, hex(10**20)]) for a in addrs])
    nonce = int(rpc.batch([("eth_getTransactionCount", [treasury, "pending"])])[0], 16)
    funding, approvals, joins = [], [], []
    for k, a in enumerate(addrs):
        gpu, vram = hardware[(start + k) % len(hardware)]
        funding.append({"from": treasury, "to": token.address, "nonce": hex(nonce + k),
                        "data": calldata("transfer(address,uint256)", ["address", "uint256"], [a, STAKE])})
        approvals.append({"from": a, "to": token.address, "nonce": "0x0", "data": calldata(
            "approve(address,uint256)", ["address", "uint256"], [registry.address, STAKE])})
        joins.append({"from": a, "to": registry.address, "nonce": "0x1", "gas": hex(1_000_000), "data": calldata(
            "join(uint256,string,uint16,uint16[3],bytes32[])",
            ["uint256", "string", "uint16", "uint16[3]", "bytes32[]"],
            [STAKE, gpu, vram, [1, 0, 0], MODELS])})
    rpc.send_all(funding, batched=False)
    rpc.send_all(approvals)
    rpc.send_all(joins)


def cycles(registry, market, req, seed0: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """CYCLES x (lockRandom, release); returns tx and exec gas of both."""
    lock_tx, lock_ex, rel_tx, rel_ex = [], [], [], []
    for k in range(CYCLES):
        node = registry.previewSelect(req, seed0 + k, ZERO, ZERO)
        tx = registry.lockRandom(req, seed0 + k, ZERO, ZERO, sender=market)
        assert registry.statusOf(node) == 2, "lockRandom locked another node than previewed"
        lock_tx.append(tx.gas_used)
        lock_ex.append(tx.gas_used - intrinsic(tx))
        tx = registry.release(node, 10, True, sender=market)
        rel_tx.append(tx.gas_used)
        rel_ex.append(tx.gas_used - intrinsic(tx))
    return lock_tx, lock_ex, rel_tx, rel_ex


def permit_sig(token, key, spender, value, deadline):
    holder = Account.from_key(key).address
    data = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "Permit": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"},
                       {"name": "value", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
                       {"name": "deadline", "type": "uint256"}],
        },
        "primaryType": "Permit",
        "domain": {"name": "Crynux", "version": "1", "chainId": chain.chain_id, "verifyingContract": token.address},
        "message": {"owner": holder, "spender": spender, "value": value, "nonce": token.nonces(holder),
                    "deadline": deadline},
    }
    s = Account.sign_message(encode_typed_data(full_message=data), key)
    return s.v, s.r.to_bytes(32, "big"), s.s.to_bytes(32, "big")


@click.command(cls=ConnectedProviderCommand)
@network_option(default="ethereum:local:foundry")
def cli(network):
    t0 = time.time()
    owner, treasury, market = accounts.test_accounts[0], accounts.test_accounts[1], accounts.test_accounts[9]
    rpc = Rpc(chain.provider.uri)
    rpc.batch([("anvil_autoImpersonateAccount", [True])])
    token = owner.deploy(project.CNXToken, owner, treasury)
    registry = owner.deploy(project.NodeRegistry, token, owner, treasury)
    registry.setMarket(market, sender=owner)  # an EOA: no onNodeAvailable callback
    rows: list[tuple[str, int, int | str]] = []
    result: dict = {}

    def row(name: str, tx_gas: int, exec_gas: int | str = "") -> None:
        rows.append((name, tx_gas, exec_gas))
        result[name] = {"tx": tx_gas, "exec": exec_gas} if exec_gas != "" else {"tx": tx_gas}

    # ---- single operations, by fresh test accounts
    users = [accounts.test_accounts.generate_test_account() for _ in range(3)]
    for u in users:
        chain.provider.set_balance(u.address, 10**21)
        token.transfer(u, 10 * STAKE, sender=treasury)
        token.approve(registry, 2**256 - 1, sender=u)
    gpu, vram = HARDWARE[0]
    tx = registry.join(STAKE, gpu, vram, [1, 0, 0], MODELS, sender=users[0])
    row("join, new hardware group, 2 models", tx.gas_used, tx.gas_used - intrinsic(tx))
    tx = registry.join(STAKE, gpu, vram, [1, 0, 0], MODELS, sender=users[1])
    row("join, 2 models", tx.gas_used, tx.gas_used - intrinsic(tx))
    permit_user = accounts.test_accounts.generate_test_account()
    chain.provider.set_balance(permit_user.address, 10**21)
    token.transfer(permit_user, STAKE, sender=treasury)
    deadline = chain.pending_timestamp + 3600
    v, r, s = permit_sig(token, permit_user.private_key, registry.address, STAKE, deadline)
    tx = registry.joinWithPermit(STAKE, gpu, vram, [1, 0, 0], MODELS, deadline, v, r, s, sender=permit_user)
    row("joinWithPermit, 2 models", tx.gas_used, tx.gas_used - intrinsic(tx))
    tx = registry.pause(sender=users[0])
    row("pause (Available -> Paused)", tx.gas_used, tx.gas_used - intrinsic(tx))
    tx = registry.resume(sender=users[0])
    row("resume (Paused -> Available)", tx.gas_used, tx.gas_used - intrinsic(tx))
    tx = registry.quit(sender=users[0])
    row("quit (Available -> Quit, stake returned)", tx.gas_used, tx.gas_used - intrinsic(tx))
    tx = registry.join(STAKE, gpu, vram, [1, 0, 0], MODELS, sender=users[0])
    row("rejoin after quit, 2 models", tx.gas_used, tx.gas_used - intrinsic(tx))
    tx = registry.updateModels([keccak(text="lora:new")], [MODELS[1]], sender=users[1])
    row("updateModels (+1, -1)", tx.gas_used, tx.gas_used - intrinsic(tx))
    tx = registry.lock(users[1], sender=market)
    row("lock(node)", tx.gas_used, tx.gas_used - intrinsic(tx))
    tx = registry.release(users[1], 10, False, sender=market)
    row("release(node, 10, settled=false)", tx.gas_used, tx.gas_used - intrinsic(tx))
    tx = registry.settle(users[1], sender=market)
    row("settle(node)", tx.gas_used, tx.gas_used - intrinsic(tx))
    # Leave these out of the node counts below.
    for u in (users[0], users[1], permit_user):
        registry.quit(sender=u)

    # ---- lockRandom + release as the network grows (4 hardware groups at every size)
    any_gpu = (0, b"\x00" * 32, b"\x00" * 32)
    any_local = (0, b"\x00" * 32, MODELS[0])
    exact = (24, keccak(text=HARDWARE[0][0]), b"\x00" * 32)
    scale: dict = {}
    have = 0
    for target in (10, 100, 1000):
        add_nodes(rpc, token, registry, treasury.address, have, target - have)
        have = target
        assert registry.countsByStatus()[1] == target, "not every node joined"
        entry = {}
        for label, req in (("any GPU", any_gpu), ("any GPU + local model", any_local), ("exact GPU", exact)):
            lt, le, rt, re_ = cycles(registry, market, req, seed0=target * 1000)
            entry[label] = {"lockRandom_tx": round(statistics.mean(lt)), "lockRandom_exec": round(statistics.mean(le)),
                            "lockRandom_exec_max": max(le), "release_tx": round(statistics.mean(rt)),
                            "release_exec": round(statistics.mean(re_)),
                            "lock_plus_release_exec": round(statistics.mean(le) + statistics.mean(re_))}
        scale[str(target)] = entry
    result["selection_by_nodes"] = scale

    # ---- per-group cost: 32 hardware groups (maxGroups), 1,000 nodes + 28 more
    extra = [(f"GPU model {k}", 16) for k in range(28)]
    add_nodes(rpc, token, registry, treasury.address, have, 28, hardware=extra)
    lt, le, rt, re_ = cycles(registry, market, any_gpu, seed0=77_000)
    result["selection_32_groups"] = {"lockRandom_exec": round(statistics.mean(le)),
                                     "release_exec": round(statistics.mean(re_))}

    # ---- print
    click.echo(f"\nNodeRegistry gas ({network}; {time.time() - t0:.0f} s)\n")
    click.echo(f"{'operation':48} {'tx gas':>9} {'exec gas':>9}")
    for name, g, e in rows:
        click.echo(f"{name:48} {g:>9,} {e:>9,}" if e != "" else f"{name:48} {g:>9,}")
    click.echo(f"\nlockRandom + release, mean of {CYCLES} cycles (exec gas; tx gas adds ~21.6k each)")
    click.echo(f"{'nodes':>6} {'requirement':24} {'lockRandom':>10} {'max':>7} {'release':>8} {'sum':>7}")
    for n, entry in scale.items():
        for label, e in entry.items():
            click.echo(f"{n:>6} {label:24} {e['lockRandom_exec']:>10,} {e['lockRandom_exec_max']:>7,} "
                       f"{e['release_exec']:>8,} {e['lock_plus_release_exec']:>7,}")
    ratio = scale["1000"]["any GPU"]["lockRandom_exec"] / scale["10"]["any GPU"]["lockRandom_exec"]
    result["lockRandom_ratio_1000_vs_10"] = round(ratio, 3)
    click.echo(f"\nlockRandom at 1,000 nodes / at 10 nodes: {ratio:.3f} (must be <= 1.3)")
    g32 = result["selection_32_groups"]
    click.echo(f"32 hardware groups, any GPU: lockRandom {g32['lockRandom_exec']:,}, release {g32['release_exec']:,} "
               f"(vs {scale['1000']['any GPU']['lockRandom_exec']:,} with 4 groups)")

    OUT.parent.mkdir(exist_ok=True)
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data["registry"] = result
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    click.echo(f"\nwritten to {OUT} (key 'registry')")
