"""The emission rewards of one node: what node mining and task mining owe it, and claiming them.

Node mining accrues continuously while the node is online (claimable at any time); task
mining pays each ended month's budget in proportion to the node's successful tasks of that
month. Both mint on claim, to the node's own address.

    rewards = read_rewards(chain)          # Rewards: node mining wei, ended months -> wei
    receipts = claim_rewards(chain, rewards)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from web3.contract import Contract

from crynux_common.deployment import DeploymentError
from node_client.chain import ChainUnavailable, NodeChain

log = logging.getLogger(__name__)

#: Months read per JSON-RPC batch when looking for months with unclaimed tasks.
MONTH_BATCH = 120


class RewardsUnavailable(Exception):
    """The deployment has no emission contracts."""


@dataclass(frozen=True)
class Rewards:
    """What the node can claim now, in wei, and what the running month holds so far."""

    node_mining: int
    #: Ended months with unclaimed successful tasks -> the node's share of their budget.
    task_months: dict[int, int] = field(default_factory=dict)
    current_month: int = 0
    #: The node's successful tasks of the running month (claimable once it ends).
    current_tasks: int = 0

    @property
    def task_mining(self) -> int:
        return sum(self.task_months.values())

    @property
    def total(self) -> int:
        return self.node_mining + self.task_mining


def _mining(chain: NodeChain) -> tuple[Contract, Contract]:
    try:
        return (chain.deployment.contract(chain.w3, "NodeMining"),
                chain.deployment.contract(chain.w3, "TaskMining"))
    except DeploymentError as exc:
        raise RewardsUnavailable(f"no emission contracts in this deployment: {exc}") from exc


def _batch(chain: NodeChain, calls: list[Any]) -> list[Any]:
    """Results of view calls, sent as JSON-RPC batches."""
    out: list[Any] = []
    try:
        for start in range(0, len(calls), MONTH_BATCH):
            with chain.w3.batch_requests() as batch:
                for fn in calls[start:start + MONTH_BATCH]:
                    batch.add(fn)
                out.extend(batch.execute())
    except Exception as exc:
        raise ChainUnavailable(f"batched view calls failed: {exc}") from exc
    return out


def read_rewards(chain: NodeChain, node: str | None = None) -> Rewards:
    """The rewards `node` (default: this node's account) can claim now."""
    node_mining, task_mining = _mining(chain)
    who = node or chain.address
    pending = int(chain.call(node_mining.functions.claimable(who)))
    current = int(chain.call(task_mining.functions.currentMonth()))
    tasks = _batch(chain, [task_mining.functions.tasksOf(m, who) for m in range(current + 1)])
    months = [m for m in range(current) if int(tasks[m]) > 0]
    shares = _batch(chain, [task_mining.functions.claimable(who, [m]) for m in months]) if months else []
    return Rewards(node_mining=pending, task_months={m: int(s) for m, s in zip(months, shares, strict=True)},
                   current_month=current, current_tasks=int(tasks[current]))


def claim_rewards(chain: NodeChain, rewards: Rewards) -> list[dict[str, Any]]:
    """Claims what `rewards` lists (read it just before): node mining, then every ended month
    with tasks in one transaction. Returns the receipts; nothing is sent when nothing is due."""
    node_mining, task_mining = _mining(chain)
    receipts = []
    if rewards.node_mining > 0:
        receipts.append(chain.transact(node_mining.functions.claim(), "NodeMining.claim"))
        log.info("claimed node mining: %.6f CNX", rewards.node_mining / 1e18)
    if rewards.task_months:
        months = sorted(rewards.task_months)
        receipts.append(chain.transact(task_mining.functions.claim(months), f"TaskMining.claim({months})"))
        log.info("claimed task mining of months %s: %.6f CNX", months, rewards.task_mining / 1e18)
    return receipts
