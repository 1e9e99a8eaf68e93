"""TaskMining: monthly budgets on the E_B curve shared by successful tasks, claims after the
month ends, the roll-over of months without tasks, roles and rounding."""
from __future__ import annotations

from collections import Counter
from decimal import Decimal

import ape
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.isolation import isolated
from tests.emission.conftest import deploy_task_mining, tx_heavy_settings
from tests.reference.emission import (
    MONTH_SECONDS,
    TASK_POOL_WEI,
    relative_error,
    task_budgets_with_rollover,
    task_cumulative,
    task_month_budget,
)

TOLERANCE = Decimal("1e-9")
ZERO = "0x0000000000000000000000000000000000000000"


@pytest.fixture
def market(project, token, owner, reporter, chain):
    """A TaskMining whose month 0 starts 100 s ahead (exact timestamps in the tests)."""
    return deploy_task_mining(project, token, owner, reporter, chain.pending_timestamp + 100)


def in_month(chain, tm, month: int, offset: int = 1) -> None:
    """The next transaction is mined `offset` seconds into `month`."""
    chain.pending_timestamp = tm.startTime() + month * MONTH_SECONDS + offset


# ---------------------------------------------------------------- deployment and roles


def test_constructor_setsPoolStartAndRoles(task_mining, token, owner, reporter):
    assert task_mining.pool() == token.CAP() * 2 // 5 == TASK_POOL_WEI
    assert task_mining.token() == token.address
    assert task_mining.MONTH() == MONTH_SECONDS
    assert task_mining.hasRole(task_mining.DEFAULT_ADMIN_ROLE(), owner)
    assert task_mining.hasRole(task_mining.REPORTER_ROLE(), reporter)
    assert task_mining.currentMonth() == 0


def test_constructor_failsIfStartInPast(project, token, owner, chain):
    """A start up to one day back is accepted (a deploy script's `now`), not more."""
    now = chain.pending_timestamp
    with ape.reverts(project.TaskMining.TaskMiningStartInPast, startTime=now - 86_401, nowTime=now):
        owner.deploy(project.TaskMining, token, owner, now - 86_401)
    chain.pending_timestamp = now + 1
    contract = owner.deploy(project.TaskMining, token, owner, now - 86_399)
    assert contract.startTime() == now - 86_399
    assert contract.MAX_START_LAG() == 86_400


def test_constructor_failsIfZeroTokenOrAdmin(project, token, owner):
    with ape.reverts(project.TaskMining.TaskMiningZeroToken):
        owner.deploy(project.TaskMining, ZERO, owner, 0)
    with ape.reverts(project.TaskMining.TaskMiningZeroAdmin):
        owner.deploy(project.TaskMining, token, ZERO, 0)


def test_recordSuccess_failsIfNotReporter(task_mining, nodes):
    role = task_mining.REPORTER_ROLE()
    with ape.reverts(task_mining.AccessControlUnauthorizedAccount, account=nodes[0].address, neededRole=role):
        task_mining.recordSuccess(nodes[0], sender=nodes[0])


def test_recordSuccess_countsAndEmits(market, reporter, nodes, chain):
    in_month(chain, market, 2)
    tx = market.recordSuccess(nodes[0], sender=reporter)
    assert tx.events == [market.MonthOpened(2, 0), market.SuccessRecorded(nodes[0], 2, 1)]
    tx = market.recordSuccess(nodes[0], sender=reporter)
    assert tx.events == [market.SuccessRecorded(nodes[0], 2, 2)]
    market.recordSuccess(nodes[1], sender=reporter)
    assert market.tasksOf(2, nodes[0]) == 2
    assert market.tasksOf(2, nodes[1]) == 1
    tasks, budget, budget_from = market.monthInfo(2)
    assert (tasks, budget_from) == (3, 0)
    assert budget == market.cumulativeEmission(3)


def test_recordSuccess_beforeStart_countsInMonthZero(market, reporter, nodes, chain):
    assert chain.pending_timestamp < market.startTime()
    market.recordSuccess(nodes[0], sender=reporter)
    assert market.tasksOf(0, nodes[0]) == 1
    assert market.monthInfo(0)[0] == 1


def test_claim_failsIfMonthNotEnded(market, reporter, nodes, chain):
    in_month(chain, market, 0)
    market.recordSuccess(nodes[0], sender=reporter)
    in_month(chain, market, 0, MONTH_SECONDS - 1)  # last second of month 0
    with ape.reverts(market.TaskMiningMonthNotEnded, month=0, currentMonth=0):
        market.claim([0], sender=nodes[0])
    in_month(chain, market, 1, 0)
    with ape.reverts(market.TaskMiningMonthNotEnded, month=5, currentMonth=1):
        market.claim([0, 5], sender=nodes[0])


def test_claim_failsIfNothingToClaim(market, reporter, nodes, chain):
    in_month(chain, market, 0)
    market.recordSuccess(nodes[0], sender=reporter)
    in_month(chain, market, 1)
    with ape.reverts(market.TaskMiningNothingToClaim, node=nodes[1].address, month=0):
        market.claim([0], sender=nodes[1])
    with ape.reverts(market.TaskMiningNothingToClaim, node=nodes[0].address, month=0):
        market.claim([0, 0], sender=nodes[0])  # the same month twice
    market.claim([0], sender=nodes[0])
    with ape.reverts(market.TaskMiningNothingToClaim, node=nodes[0].address, month=0):
        market.claim([0], sender=nodes[0])


def test_claim_sharesBudgetByTasks(market, token, reporter, nodes, chain):
    in_month(chain, market, 0)
    market.recordSuccess(nodes[0], sender=reporter)
    for _ in range(3):
        market.recordSuccess(nodes[1], sender=reporter)
    in_month(chain, market, 1)
    chain.mine()
    budget = market.monthInfo(0)[1]
    assert relative_error(budget, task_month_budget(0)) <= TOLERANCE
    assert market.claimable(nodes[0], [0]) == budget // 4
    tx = market.claim([0], sender=nodes[0])
    assert tx.events[0] == market.Claimed(nodes[0], 0, 1, budget // 4)
    market.claim([0], sender=nodes[1])
    assert token.balanceOf(nodes[0]) == budget // 4
    assert token.balanceOf(nodes[1]) == budget * 3 // 4
    assert market.totalClaimed() == budget // 4 + budget * 3 // 4 <= budget
    assert market.tasksOf(0, nodes[1]) == 0


def test_claim_severalMonthsAtOnce(market, token, reporter, nodes, chain):
    for month in (0, 1, 2):
        in_month(chain, market, month)
        market.recordSuccess(nodes[0], sender=reporter)
    in_month(chain, market, 3)
    chain.mine()
    expected = market.claimable(nodes[0], [0, 1, 2])
    tx = market.claim([2, 0, 1], sender=nodes[0])
    assert [e.month for e in tx.events if e.event_name == "Claimed"] == [2, 0, 1]
    assert token.balanceOf(nodes[0]) == expected == market.cumulativeEmission(3)
    assert relative_error(expected, task_cumulative(3)) <= TOLERANCE


def test_monthWithoutTasks_rollsOverToNextMonthWithTasks(market, token, reporter, nodes, chain):
    """Months 1 and 2 have no task: their budgets are not lost, month 3 (the next month with
    tasks) takes them."""
    in_month(chain, market, 0)
    market.recordSuccess(nodes[0], sender=reporter)
    in_month(chain, market, 2)
    chain.mine()
    # Waiting: the budgets of months 1 and 2 (this one has no task yet).
    carried = market.carriedBudget()
    assert carried == market.cumulativeEmission(3) - market.cumulativeEmission(1)
    assert market.monthInfo(1) == (0, 0, 0)
    in_month(chain, market, 3)
    tx = market.recordSuccess(nodes[1], sender=reporter)
    assert tx.events[0] == market.MonthOpened(3, 1)
    tasks, budget, budget_from = market.monthInfo(3)
    assert (tasks, budget_from) == (1, 1)
    assert budget == market.cumulativeEmission(4) - market.cumulativeEmission(1)
    expected = task_month_budget(1) + task_month_budget(2) + task_month_budget(3)
    assert relative_error(budget, expected) <= TOLERANCE
    assert market.carriedBudget() == 0
    in_month(chain, market, 4)
    market.claim([0], sender=nodes[0])
    market.claim([3], sender=nodes[1])
    # Nothing lost: the two claims are the whole curve up to the end of month 3.
    assert token.balanceOf(nodes[0]) + token.balanceOf(nodes[1]) == market.cumulativeEmission(4)


def test_monthsWithoutTasks_atTheStart_rollIntoTheFirstMonthWithTasks(market, reporter, nodes, chain):
    in_month(chain, market, 5)
    market.recordSuccess(nodes[0], sender=reporter)
    assert market.monthInfo(5) == (1, market.cumulativeEmission(6), 0)


def test_trailingMonthsWithoutTasks_waitInThePool(market, token, reporter, nodes, chain):
    """After the last month with tasks, budgets wait (not minted) for the next task."""
    in_month(chain, market, 0)
    market.recordSuccess(nodes[0], sender=reporter)
    in_month(chain, market, 30)
    market.claim([0], sender=nodes[0])
    assert market.totalClaimed() == market.cumulativeEmission(1)
    assert market.carriedBudget() == market.cumulativeEmission(31) - market.cumulativeEmission(1)
    assert token.totalSupply() == token.GENESIS_SUPPLY() + market.cumulativeEmission(1)


@tx_heavy_settings()
@given(
    tasks=st.lists(
        st.tuples(st.integers(0, 239), st.integers(0, 4), st.integers(1, 2)),  # (month, node, count)
        min_size=1,
        max_size=5,
    )
)
def test_claims_matchReferenceAndNeverExceedBudgets(chain, project, token, owner, reporter, nodes, tasks):
    """Random tasks over the 20-year horizon: every node's claim is its share of the reference
    budget (roll-over included) to 1e-9, and the claims of a month never exceed its budget."""
    with isolated(chain):
        tm = deploy_task_mining(project, token, owner, reporter, chain.pending_timestamp + 100)
        counts: Counter[tuple[int, int]] = Counter()
        offset = 0
        for month, node, count in sorted(tasks):
            for _ in range(count):
                offset += 1
                in_month(chain, tm, month, offset)
                tm.recordSuccess(nodes[node], sender=reporter)
                counts[(month, node)] += 1
        last = max(month for month, _, _ in tasks)
        in_month(chain, tm, last + 1, 0)
        budgets = task_budgets_with_rollover(month for month, _, _ in tasks)
        per_month_total = Counter()
        for (month, node), count in counts.items():
            per_month_total[month] += count
        claimed_per_month: Counter[int] = Counter()
        for node in range(5):
            months = sorted(m for (m, n) in counts if n == node)
            if not months:
                continue
            tx = tm.claim(months, sender=nodes[node])
            for event in tx.events:
                if event.event_name != "Claimed":
                    continue
                expected = budgets[event.month] * counts[(event.month, node)] / per_month_total[event.month]
                assert relative_error(event.amount, expected) <= TOLERANCE
                claimed_per_month[event.month] += event.amount
        for month, claimed in claimed_per_month.items():
            budget = tm.monthInfo(month)[1]
            assert budget - per_month_total[month] < claimed <= budget
        total = tm.totalClaimed()
        assert total <= tm.cumulativeEmission(last + 1) <= TASK_POOL_WEI
        assert relative_error(total, task_cumulative(last + 1)) <= TOLERANCE
