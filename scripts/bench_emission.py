"""`ape run bench_emission`: gas of the emission hooks and claims at 10 and 1,000 nodes.

Deploys the token and both mining contracts on a local Anvil, registers N nodes (weights in
NodeMining, one successful task each in TaskMining), then measures every hook and claim.
The gas must not grow with N (the accumulator and the per-month counters are O(1)).
Prints a table and read-modify-writes bench/gas.json under the "emission" key.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
from ape import accounts, chain, project
from ape.cli import ConnectedProviderCommand, network_option
from ape.logging import logger

NODE_COUNTS = (10, 1_000)
DAY = 86_400
MONTH = 2_629_800
GAS_JSON = Path("bench/gas.json")
# Registration loops pass a gas limit, which skips Anvil's gas estimation (faster).
LOOP_GAS = 300_000


def _synthetic_node(i: int) -> str:
    """A node address that never sends a transaction (only the measured node claims)."""
    return "0x" + (0xC0DE << 144 | i).to_bytes(20, "big").hex()


def _measure(n: int) -> dict[str, int]:
    admin, treasury, reporter, claimer, other = (accounts.test_accounts[i] for i in range(5))
    token = admin.deploy(project.CNXToken, admin, treasury)
    nm = admin.deploy(project.NodeMining, token, admin, 0)
    tm = admin.deploy(project.TaskMining, token, admin, 0)
    for contract in (nm, tm):
        token.grantRole(token.MINTER_ROLE(), contract, sender=admin)
        contract.grantRole(contract.REPORTER_ROLE(), reporter, sender=admin)
    others = [_synthetic_node(i) for i in range(n - 2)]
    gas: dict[str, int] = {}

    # Node mining: N - 1 nodes online, then the measured node joins, changes, claims, leaves.
    nm.updateWeight(other, 10, sender=reporter)
    for i, node in enumerate(others):
        nm.updateWeight(node, 10 + i % 10, sender=reporter, gas=LOOP_GAS)
    # Warm-up: the accumulator has moved at least once (its first write from zero costs
    # 17,100 gas more, whether it happens here or in the first measured call).
    chain.pending_timestamp += DAY
    nm.updateWeight(other, 11, sender=reporter)
    chain.pending_timestamp += DAY
    gas["NodeMining.updateWeight (node joins, 0 -> w)"] = nm.updateWeight(claimer, 10, sender=reporter).gas_used
    chain.pending_timestamp += DAY
    gas["NodeMining.updateWeight (QoS change, w -> w')"] = nm.updateWeight(claimer, 7, sender=reporter).gas_used
    chain.pending_timestamp += DAY
    gas["NodeMining.claim (first, empty balance)"] = nm.claim(sender=claimer).gas_used
    chain.pending_timestamp += DAY
    gas["NodeMining.claim (again)"] = nm.claim(sender=claimer).gas_used
    chain.pending_timestamp += DAY
    gas["NodeMining.updateWeight (node pauses, w -> 0)"] = nm.updateWeight(claimer, 0, sender=reporter).gas_used

    # Task mining: one task for each of the N - 1 other nodes in month 0.
    tm.recordSuccess(other, sender=reporter)
    for node in others:
        tm.recordSuccess(node, sender=reporter, gas=LOOP_GAS)
    gas["TaskMining.recordSuccess (node's first task of the month)"] = tm.recordSuccess(claimer, sender=reporter).gas_used
    gas["TaskMining.recordSuccess (node's next task)"] = tm.recordSuccess(claimer, sender=reporter).gas_used
    chain.pending_timestamp = tm.startTime() + MONTH + 1
    gas["TaskMining.recordSuccess (month's first task)"] = tm.recordSuccess(claimer, sender=reporter).gas_used
    gas["TaskMining.claim (1 month)"] = tm.claim([0], sender=claimer).gas_used
    for month in range(2, 13):
        chain.pending_timestamp = tm.startTime() + month * MONTH + 1
        tm.recordSuccess(claimer, sender=reporter)
    chain.pending_timestamp = tm.startTime() + 13 * MONTH + 1
    gas["TaskMining.claim (12 months)"] = tm.claim(list(range(1, 13)), sender=claimer).gas_used
    return gas


def _write_json(results: dict[int, dict[str, int]]) -> None:
    data = json.loads(GAS_JSON.read_text()) if GAS_JSON.exists() else {}
    operations = list(next(iter(results.values())))
    data["emission"] = {
        "unit": "gas used by the transaction",
        "node_counts": list(results),
        "operations": {op: {str(n): results[n][op] for n in results} for op in operations},
    }
    GAS_JSON.parent.mkdir(parents=True, exist_ok=True)
    GAS_JSON.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@click.command(cls=ConnectedProviderCommand)
@network_option(default="ethereum:local:foundry")
def cli(network):
    logger.set_level("WARNING")  # not one "Confirmed" line per registration transaction
    results: dict[int, dict[str, int]] = {}
    for n in NODE_COUNTS:
        click.echo(f"measuring with {n:,} nodes ...")
        with chain.isolate():
            results[n] = _measure(n)
    width = max(len(op) for op in results[NODE_COUNTS[0]])
    header = f"{'operation':<{width}}" + "".join(f"{f'{n:,} nodes':>14}" for n in NODE_COUNTS) + f"{'growth':>9}"
    click.echo(header)
    click.echo("-" * len(header))
    for op in results[NODE_COUNTS[0]]:
        values = [results[n][op] for n in NODE_COUNTS]
        growth = values[-1] / values[0] - 1
        click.echo(f"{op:<{width}}" + "".join(f"{v:>14,}" for v in values) + f"{growth:>+9.1%}")
    _write_json(results)
    click.echo(f"wrote {GAS_JSON} (key 'emission') on {network}")
