"""Emission invariants: total supply never exceeds the cap and each contract never pays out
more than its pool, over a century of claims; a hypothesis state machine drives both
contracts against a Python model built on the reference curves."""
from __future__ import annotations

from collections import Counter
from decimal import Decimal

import ape
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.emission.conftest import deploy_node_mining, deploy_task_mining, tx_heavy_settings
from tests.reference.emission import (
    CAP_WEI,
    GENESIS_WEI,
    MONTH_SECONDS,
    NODE_POOL_WEI,
    TASK_POOL_WEI,
    YEAR_SECONDS,
    node_cumulative,
    relative_error,
    task_budgets_with_rollover,
)

TOLERANCE = Decimal("1e-9")


def test_century_ofClaims_neverExceedsPoolsOrCap(chain, project, token, owner, reporter, nodes):
    """Both contracts run 100 years (then 1,000) with claims every 5 years: each pays at most
    its pool, the supply stays under the cap, and after the task curve's end (month 742) the
    whole task pool has been paid, to the wei."""
    start = chain.pending_timestamp + 100
    nm = deploy_node_mining(project, token, owner, reporter, start)
    tm = deploy_task_mining(project, token, owner, reporter, start)
    nm.updateWeight(nodes[0], 5, sender=reporter)
    nm.updateWeight(nodes[1], 10, sender=reporter)
    unclaimed: list[tuple[int, int]] = []  # (month, node index) with a task to claim
    for step in range(1, 21):
        now = start + step * 5 * YEAR_SECONDS
        chain.pending_timestamp = now
        tm.recordSuccess(nodes[step % 3], sender=reporter)
        nm.claim(sender=nodes[step % 2])
        for month, node in [(m, n) for (m, n) in unclaimed if m < tm.currentMonth()]:
            tm.claim([month], sender=nodes[node])
            unclaimed.remove((month, node))
        unclaimed.append(((now - start) // MONTH_SECONDS, step % 3))
        assert token.totalSupply() <= CAP_WEI
        assert nm.totalClaimed() <= nm.emitted() <= NODE_POOL_WEI
        assert tm.totalClaimed() <= TASK_POOL_WEI
        assert token.totalSupply() == GENESIS_WEI + nm.totalClaimed() + tm.totalClaimed()
    # 100 years: the last task month (1200, past the curve's end) took every budget left.
    chain.pending_timestamp = start + 100 * YEAR_SECONDS + MONTH_SECONDS
    (month, node), = unclaimed
    tm.claim([month], sender=nodes[node])
    assert tm.totalClaimed() == TASK_POOL_WEI
    # 1,000 years: 200 half-lives, the node curve has reached its pool too.
    chain.pending_timestamp = start + 1000 * YEAR_SECONDS
    nm.updateWeight(nodes[0], 0, sender=reporter)
    nm.updateWeight(nodes[1], 0, sender=reporter)
    nm.claim(sender=nodes[0])
    nm.claim(sender=nodes[1])
    assert nm.emitted() <= NODE_POOL_WEI
    assert NODE_POOL_WEI - nm.totalClaimed() < 100
    assert token.totalSupply() <= CAP_WEI
    assert CAP_WEI - token.totalSupply() < 100
    for node in nodes[:2]:
        with ape.reverts(nm.NodeMiningNothingToClaim, node=node.address):
            nm.claim(sender=node)
    chain.pending_timestamp += 10 * YEAR_SECONDS
    last_month = tm.recordSuccess(nodes[0], sender=reporter).events[-1].month
    chain.pending_timestamp += MONTH_SECONDS
    tx = tm.claim([last_month], sender=nodes[0])
    assert tx.events[0].amount == 0
    assert tm.totalClaimed() == TASK_POOL_WEI


class EmissionMachine(RuleBasedStateMachine):
    """Random weight changes, tasks, claims and time jumps (up to a century) on both
    contracts; a Python model on the reference curves predicts every claim."""

    def __init__(self, chain, project, token, owner, reporter, nodes):
        super().__init__()
        self.chain, self.token, self.reporter, self.nodes = chain, token, reporter, nodes
        self.snapshot = chain.snapshot()
        start = chain.pending_timestamp + 10
        self.nm = deploy_node_mining(project, token, owner, reporter, start)
        self.tm = deploy_task_mining(project, token, owner, reporter, start)
        self.start = start
        # Node-mining model: weights, emission clock, last accrual time, exact earnings.
        self.weights = [0] * len(nodes)
        self.clock = 0
        self.last = start
        self.now = start  # every transaction gets an explicit, increasing timestamp
        self.earned = [Decimal(0)] * len(nodes)
        # Task-mining model: tasks per (month, node), claimed months.
        self.tasks: Counter[tuple[int, int]] = Counter()
        self.claimed: set[tuple[int, int]] = set()

    def teardown(self):
        self.chain.restore(self.snapshot)

    def _next_timestamp(self) -> int:
        self.now += 1
        self.chain.pending_timestamp = self.now
        return self.now

    def _accrue(self, timestamp: int) -> None:
        if timestamp <= self.last:
            return
        total = sum(self.weights)
        if total:
            new_clock = self.clock + timestamp - self.last
            emitted = node_cumulative(new_clock) - node_cumulative(self.clock)
            for i, w in enumerate(self.weights):
                self.earned[i] += emitted * w / total
            self.clock = new_clock
        self.last = timestamp

    @initialize()
    def init(self):
        pass

    @rule(node=st.integers(0, 4), weight=st.sampled_from([0, 0, 1, 7, 10, 20, 10**18]))
    def set_weight(self, node, weight):
        self._accrue(self._next_timestamp())
        self.nm.updateWeight(self.nodes[node], weight, sender=self.reporter)
        self.weights[node] = weight

    @rule(seconds=st.one_of(st.integers(1, 3 * 86_400), st.integers(1, 5 * YEAR_SECONDS)))
    def advance(self, seconds):
        self.now += seconds

    @rule(node=st.integers(0, 4))
    def record_success(self, node):
        month = max(0, self._next_timestamp() - self.start) // MONTH_SECONDS
        self.tm.recordSuccess(self.nodes[node], sender=self.reporter)
        self.tasks[(month, node)] += 1

    @rule(node=st.integers(0, 4))
    def claim_node_mining(self, node):
        self._accrue(self._next_timestamp())
        model = self.earned[node]
        try:
            tx = self.nm.claim(sender=self.nodes[node])
        except self.nm.NodeMiningNothingToClaim:
            assert model < 1000  # nothing, or rounded down to nothing
            return
        amount = tx.events[0].amount
        assert abs(Decimal(amount) - model) <= max(model * TOLERANCE, Decimal(1000)), (amount, model)
        self.earned[node] = Decimal(0)

    @rule(node=st.integers(0, 4))
    def claim_task_mining(self, node):
        current = max(0, self._next_timestamp() - self.start) // MONTH_SECONDS
        months = sorted(m for (m, n) in self.tasks if n == node and m < current and (m, n) not in self.claimed)
        if not months:
            return
        tx = self.tm.claim(months, sender=self.nodes[node])
        budgets = task_budgets_with_rollover(m for (m, _) in self.tasks)
        for event in (e for e in tx.events if e.event_name == "Claimed"):
            month_total = sum(c for (m, _), c in self.tasks.items() if m == event.month)
            expected = budgets[event.month] * self.tasks[(event.month, node)] / month_total
            assert relative_error(event.amount, expected) <= TOLERANCE
            self.claimed.add((event.month, node))

    @invariant()
    def supply_within_cap_and_pools(self):
        nm_claimed, tm_claimed = self.nm.totalClaimed(), self.tm.totalClaimed()
        assert self.token.totalSupply() == GENESIS_WEI + nm_claimed + tm_claimed <= CAP_WEI
        assert nm_claimed <= self.nm.emitted() <= self.nm.cumulativeEmission(self.nm.emissionClock()) <= NODE_POOL_WEI
        assert tm_claimed <= TASK_POOL_WEI


def test_emission_stateMachine(chain, project, token, owner, reporter, nodes):
    run_state_machine_as_test(
        lambda: EmissionMachine(chain, project, token, owner, reporter, nodes),
        settings=tx_heavy_settings(stateful_step_count=15),
    )
