"""NodeMining: weight-proportional accrual over the E_A curve, the stopped clock at zero
total weight, claims, roles and rounding in favour of the pool."""
from __future__ import annotations

from decimal import Decimal

import ape
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.isolation import isolated
from tests.emission.conftest import deploy_node_mining
from tests.reference.emission import (
    DAY_SECONDS,
    MONTH_SECONDS,
    NODE_POOL_WEI,
    YEAR_SECONDS,
    node_cumulative,
    relative_error,
)

TOLERANCE = Decimal("1e-9")
ZERO = "0x0000000000000000000000000000000000000000"


@pytest.fixture
def started(project, token, owner, reporter, chain):
    """A NodeMining whose START lies 100 s ahead, so that tests can put nodes online before
    the clock starts and control every timestamp exactly."""
    start = chain.pending_timestamp + 100
    return deploy_node_mining(project, token, owner, reporter, start)


def at(chain, timestamp: int) -> None:
    """The next transaction is mined at exactly `timestamp`."""
    chain.pending_timestamp = timestamp


def view_at(chain, timestamp: int) -> None:
    """Views read the state of a block mined at exactly `timestamp`."""
    chain.mine(timestamp=timestamp)


# ---------------------------------------------------------------- deployment and roles


def test_constructor_setsPoolStartAndRoles(node_mining, token, owner, reporter, chain):
    assert node_mining.pool() == token.CAP() * 2 // 5 == NODE_POOL_WEI
    assert node_mining.token() == token.address
    assert node_mining.startTime() <= chain.blocks.head.timestamp
    assert node_mining.hasRole(node_mining.DEFAULT_ADMIN_ROLE(), owner)
    assert node_mining.hasRole(node_mining.REPORTER_ROLE(), reporter)
    assert node_mining.totalWeight() == 0
    assert node_mining.emitted() == 0


def test_constructor_failsIfStartInPast(project, token, owner, chain):
    """A start up to one day back is accepted (a deploy script's `now`), not more."""
    now = chain.pending_timestamp
    with ape.reverts(project.NodeMining.NodeMiningStartInPast, startTime=now - 86_401, nowTime=now):
        owner.deploy(project.NodeMining, token, owner, now - 86_401)
    chain.pending_timestamp = now + 1
    contract = owner.deploy(project.NodeMining, token, owner, now - 86_399)
    assert contract.startTime() == now - 86_399
    assert contract.MAX_START_LAG() == 86_400


def test_constructor_failsIfZeroTokenOrAdmin(project, token, owner):
    with ape.reverts(project.NodeMining.NodeMiningZeroToken):
        owner.deploy(project.NodeMining, ZERO, owner, 0)
    with ape.reverts(project.NodeMining.NodeMiningZeroAdmin):
        owner.deploy(project.NodeMining, token, ZERO, 0)


def test_updateWeight_failsIfNotReporter(node_mining, nodes):
    role = node_mining.REPORTER_ROLE()
    with ape.reverts(node_mining.AccessControlUnauthorizedAccount, account=nodes[0].address, neededRole=role):
        node_mining.updateWeight(nodes[0], 10, sender=nodes[0])


def test_updateWeight_failsIfWeightTooLarge(node_mining, reporter, nodes):
    too_large = 2**128
    with ape.reverts(node_mining.NodeMiningWeightTooLarge, node=nodes[0].address, weight=too_large):
        node_mining.updateWeight(nodes[0], too_large, sender=reporter)


def test_updateWeight_emitsEventAndTracksTotal(node_mining, reporter, nodes):
    tx = node_mining.updateWeight(nodes[0], 10, sender=reporter)
    assert tx.events == [node_mining.WeightUpdated(nodes[0], 0, 10, 10)]
    node_mining.updateWeight(nodes[1], 25, sender=reporter)
    tx = node_mining.updateWeight(nodes[0], 4, sender=reporter)
    assert tx.events == [node_mining.WeightUpdated(nodes[0], 10, 4, 29)]
    assert node_mining.weightOf(nodes[0]) == 4
    assert node_mining.totalWeight() == 29


def test_claim_failsIfNothingToClaim(node_mining, nodes):
    with ape.reverts(node_mining.NodeMiningNothingToClaim, node=nodes[0].address):
        node_mining.claim(sender=nodes[0])


def test_claim_failsIfNotMinter(project, token, owner, reporter, nodes, chain):
    """Without MINTER_ROLE on the token nothing can be paid: the claim reverts whole."""
    nm = owner.deploy(project.NodeMining, token, owner, 0)
    nm.grantRole(nm.REPORTER_ROLE(), reporter, sender=owner)
    nm.updateWeight(nodes[0], 1, sender=reporter)
    chain.pending_timestamp += 100
    with ape.reverts(nm.AccessControlUnauthorizedAccount, account=nm.address, neededRole=token.MINTER_ROLE()):
        nm.claim(sender=nodes[0])


# ---------------------------------------------------------------- accrual follows the curve


@given(elapsed=st.integers(min_value=1, max_value=20 * YEAR_SECONDS), weight=st.integers(1, 2**100))
def test_singleNode_claimMatchesReference(chain, project, token, owner, reporter, nodes, elapsed, weight):
    """One node online from START: at START + t it has earned E_A(t) (relative error <= 1e-9,
    never more than the curve)."""
    with isolated(chain):
        nm = deploy_node_mining(project, token, owner, reporter, chain.pending_timestamp + 100)
        start = nm.startTime()
        nm.updateWeight(nodes[0], weight, sender=reporter)
        view_at(chain, start + elapsed)
        claimable = nm.claimable(nodes[0])
        assert relative_error(claimable, node_cumulative(elapsed)) <= TOLERANCE
        assert claimable <= nm.emitted() <= nm.cumulativeEmission(elapsed)
        assert nm.emissionClock() == elapsed
        before = token.balanceOf(nodes[0])
        at(chain, start + elapsed + 1)
        tx = nm.claim(sender=nodes[0])
        minted = token.balanceOf(nodes[0]) - before
        assert tx.events[0] == nm.Claimed(nodes[0], minted)
        assert relative_error(minted, node_cumulative(elapsed + 1)) <= TOLERANCE
        assert minted == nm.totalClaimed() <= nm.emitted() <= nm.cumulativeEmission(elapsed + 1)


def test_beforeStart_nothingAccrues(started, reporter, nodes, chain):
    started.updateWeight(nodes[0], 10, sender=reporter)
    view_at(chain, started.startTime())
    assert started.claimable(nodes[0]) == 0
    assert started.emissionClock() == 0
    view_at(chain, started.startTime() + DAY_SECONDS)
    assert started.emissionClock() == DAY_SECONDS
    assert relative_error(started.claimable(nodes[0]), node_cumulative(DAY_SECONDS)) <= TOLERANCE


def test_doubleWeight_accruesTwiceAsFast(started, reporter, nodes, chain):
    started.updateWeight(nodes[0], 7, sender=reporter)
    started.updateWeight(nodes[1], 14, sender=reporter)
    for days in (1, 30, 400):
        view_at(chain, started.startTime() + days * DAY_SECONDS)
        single, double = started.claimable(nodes[0]), started.claimable(nodes[1])
        assert abs(double - 2 * single) <= 2
        assert single + double <= started.emitted()
        assert relative_error(single * 3, node_cumulative(days * DAY_SECONDS)) <= TOLERANCE


def test_pausedNode_accruesNothing(started, reporter, nodes, chain):
    """Weight 0 (Paused, Quit, kicked out): no accrual, and the others take the whole rate."""
    start = started.startTime()
    started.updateWeight(nodes[0], 10, sender=reporter)
    started.updateWeight(nodes[1], 10, sender=reporter)
    at(chain, start + MONTH_SECONDS)
    started.updateWeight(nodes[1], 0, sender=reporter)  # paused
    paused_balance = started.claimable(nodes[1])
    assert relative_error(paused_balance, node_cumulative(MONTH_SECONDS) / 2) <= TOLERANCE
    view_at(chain, start + 13 * MONTH_SECONDS)
    assert started.claimable(nodes[1]) == paused_balance
    expected_online = node_cumulative(MONTH_SECONDS) / 2 + node_cumulative(13 * MONTH_SECONDS) - node_cumulative(MONTH_SECONDS)
    assert relative_error(started.claimable(nodes[0]), expected_online) <= TOLERANCE
    # Back online: accrues again from then on, at half the rate.
    at(chain, start + 13 * MONTH_SECONDS + 1)
    started.updateWeight(nodes[1], 10, sender=reporter)
    view_at(chain, start + 14 * MONTH_SECONDS)
    gained = started.claimable(nodes[1]) - paused_balance
    expected = (node_cumulative(14 * MONTH_SECONDS) - node_cumulative(13 * MONTH_SECONDS + 1)) / 2
    assert relative_error(gained, expected) <= TOLERANCE


def test_zeroTotalWeight_stopsClock_andEmissionIsNotLost(started, reporter, nodes, chain):
    """While no node is online nothing is emitted and the emission clock stands still; the
    schedule resumes where it stopped, so that time's emission stays in the pool for later
    instead of being lost or handed to the first node back online."""
    start = started.startTime()
    started.updateWeight(nodes[0], 10, sender=reporter)
    at(chain, start + YEAR_SECONDS)
    started.updateWeight(nodes[0], 0, sender=reporter)  # the whole network goes offline
    emitted_before = started.emitted()
    assert relative_error(emitted_before, node_cumulative(YEAR_SECONDS)) <= TOLERANCE
    view_at(chain, start + 3 * YEAR_SECONDS)  # two years offline
    assert started.emitted() == emitted_before
    assert started.emissionClock() == YEAR_SECONDS
    at(chain, start + 3 * YEAR_SECONDS + 1)
    started.updateWeight(nodes[1], 10, sender=reporter)  # a node comes back
    # No windfall: right after coming back the node has earned (almost) nothing ...
    view_at(chain, start + 3 * YEAR_SECONDS + 1 + DAY_SECONDS)
    day = node_cumulative(YEAR_SECONDS + DAY_SECONDS) - node_cumulative(YEAR_SECONDS)
    assert relative_error(started.claimable(nodes[1]), day) <= TOLERANCE
    # ... and the curve continues from the clock, not from calendar time.
    view_at(chain, start + 3 * YEAR_SECONDS + 1 + YEAR_SECONDS)
    assert started.emissionClock() == 2 * YEAR_SECONDS
    assert relative_error(started.emitted(), node_cumulative(2 * YEAR_SECONDS)) <= TOLERANCE
    # Nothing lost: over the long run the whole pool is still emitted.
    view_at(chain, start + 2 * YEAR_SECONDS + 100 * 60 * MONTH_SECONDS + 2)
    assert NODE_POOL_WEI - started.emitted() < 10**6


def test_claim_resetsAccrual_andKeepsAccruing(started, token, reporter, nodes, chain):
    start = started.startTime()
    started.updateWeight(nodes[0], 3, sender=reporter)
    at(chain, start + MONTH_SECONDS)
    first = started.claim(sender=nodes[0]).events[0].amount
    assert token.balanceOf(nodes[0]) == first
    assert started.claimable(nodes[0]) == 0
    at(chain, start + 2 * MONTH_SECONDS)
    second = started.claim(sender=nodes[0]).events[0].amount
    assert relative_error(first + second, node_cumulative(2 * MONTH_SECONDS)) <= TOLERANCE
    started.updateWeight(nodes[0], 0, sender=reporter)
    # The weight-0 update may land a second or more after the claim (wall clock under load):
    # collect that tail once; with weight 0 nothing accrues after it.
    if started.claimable(nodes[0]):
        started.claim(sender=nodes[0])
    view_at(chain, start + 3 * MONTH_SECONDS)
    assert started.claimable(nodes[0]) == 0
    with ape.reverts(started.NodeMiningNothingToClaim, node=nodes[0].address):
        started.claim(sender=nodes[0])


def test_manyNodes_claimsAddUpToEmitted(started, token, accounts, reporter, chain):
    """20 nodes with different weights joining over time: what they claim adds up to what the
    curve emitted, short by a few wei at most (rounding favours the pool)."""
    start = started.startTime()
    operators = [accounts.generate_test_account() for _ in range(20)]
    for op in operators:
        chain.set_balance(op.address, 10**20)
    for i, op in enumerate(operators):
        at(chain, start + i * DAY_SECONDS)
        started.updateWeight(op, 1 + 37 * i, sender=reporter)
    at(chain, start + 2 * YEAR_SECONDS)
    for op in operators:  # everyone goes offline, the clock stops
        started.updateWeight(op, 0, sender=reporter)
    clock = started.emissionClock()
    for op in operators:
        started.claim(sender=op)
    claimed = sum(token.balanceOf(op) for op in operators)
    assert claimed == started.totalClaimed()
    curve = started.cumulativeEmission(clock)
    assert claimed <= started.emitted() <= curve
    assert curve - claimed < 100
    assert relative_error(claimed, node_cumulative(clock)) <= TOLERANCE
