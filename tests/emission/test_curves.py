"""The contracts' emission curves (EmissionMath via the contracts' views) against the Python
reference (tests/reference/emission.py): relative error <= 1e-9 over the 20-year horizon,
monotone, zero at the start, never past the pool."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.reference.emission import (
    CAP_WEI,
    HALF_LIFE_SECONDS,
    MONTH_SECONDS,
    NODE_POOL_WEI,
    TASK_POOL_WEI,
    YEAR_SECONDS,
    crynux_f,
    node_cumulative,
    relative_error,
    task_cumulative,
    task_month_budget,
)

TOLERANCE = Decimal("1e-9")
HORIZON_SECONDS = 20 * YEAR_SECONDS
HORIZON_MONTHS = 20 * 12
# Where EmissionMath switches from its series to expWad: x = t ln2 / T = 1e-3.
SERIES_SWITCH_SECONDS = int(Decimal("1e-3") * HALF_LIFE_SECONDS / Decimal(2).ln())


def test_reference_normalisation():
    """The reference's closed form equals Crynux's f(a) rescaled to (f(a) - f(0)) / (1 - f(0))."""
    for a in (1, 7, 80, 240, 700):
        rescaled = (crynux_f(a) - crynux_f(0)) / (1 - crynux_f(0)) * TASK_POOL_WEI
        assert relative_error(task_cumulative(a), rescaled) < Decimal("1e-20")
    assert task_cumulative(0) == 0
    assert task_cumulative(10_000) == TASK_POOL_WEI
    assert node_cumulative(HALF_LIFE_SECONDS) == NODE_POOL_WEI // 2


def test_pools_are_forty_percent_of_the_cap(node_mining, task_mining, token):
    assert node_mining.pool() == task_mining.pool() == token.CAP() * 2 // 5 == NODE_POOL_WEI
    assert token.GENESIS_SUPPLY() + node_mining.pool() + task_mining.pool() == CAP_WEI
    assert task_mining.MONTH() == MONTH_SECONDS


@given(t=st.integers(min_value=0, max_value=HORIZON_SECONDS))
@example(t=1)
@example(t=2)
@example(t=SERIES_SWITCH_SECONDS)
@example(t=SERIES_SWITCH_SECONDS + 1)
@example(t=HALF_LIFE_SECONDS)
@example(t=HORIZON_SECONDS)
def test_nodeCurve_matchesReference(node_mining, t):
    got = node_mining.cumulativeEmission(t)
    want = node_cumulative(t)
    assert relative_error(got, want) <= TOLERANCE, (t, got, want)


def test_nodeCurve_monotoneAcrossSeriesSwitch(node_mining):
    values = [node_mining.cumulativeEmission(t) for t in range(SERIES_SWITCH_SECONDS - 5, SERIES_SWITCH_SECONDS + 6)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


@given(t=st.integers(min_value=0, max_value=2**64 - 1), dt=st.integers(min_value=1, max_value=10 * YEAR_SECONDS))
@example(t=100 * HALF_LIFE_SECONDS - 1, dt=1)
def test_nodeCurve_monotoneAndBelowPool(node_mining, t, dt):
    a = node_mining.cumulativeEmission(t)
    b = node_mining.cumulativeEmission(t + dt)
    assert a <= b <= NODE_POOL_WEI


def test_nodeCurve_reachesPoolOnlyAtTheEnd(node_mining):
    assert node_mining.cumulativeEmission(0) == 0
    assert node_mining.cumulativeEmission(100 * YEAR_SECONDS) < NODE_POOL_WEI
    assert node_mining.cumulativeEmission(100 * HALF_LIFE_SECONDS) == NODE_POOL_WEI
    assert node_mining.cumulativeEmission(2**200) == NODE_POOL_WEI


@given(a=st.integers(min_value=0, max_value=HORIZON_MONTHS))
@example(a=0)
@example(a=1)
@example(a=80)
@example(a=HORIZON_MONTHS)
def test_taskCurve_matchesReference(task_mining, a):
    got = task_mining.cumulativeEmission(a)
    assert relative_error(got, task_cumulative(a)) <= TOLERANCE, a
    budget = task_mining.cumulativeEmission(a + 1) - got
    assert relative_error(budget, task_month_budget(a)) <= TOLERANCE, a


def test_taskCurve_monotoneAndReachesPool(task_mining):
    """Every month of the first 25 years, then every 10th up to the curve's end (month 742),
    the months around it, and a few far beyond."""
    months = list(range(0, 300)) + list(range(300, 740, 10)) + list(range(740, 745)) + [1000, 10**6, 2**64, 2**200]
    values = [task_mining.cumulativeEmission(a) for a in months]
    assert values[0] == 0
    assert values == sorted(values)
    assert values[-1] == TASK_POOL_WEI
    assert task_mining.cumulativeEmission(741) < TASK_POOL_WEI == task_mining.cumulativeEmission(742)


@pytest.mark.parametrize("years", [1, 5, 10, 20])
def test_curves_milestones(node_mining, task_mining, years):
    """A readable check of the schedule: half the node pool after 5 years, and so on."""
    node = node_mining.cumulativeEmission(years * YEAR_SECONDS) / NODE_POOL_WEI
    task = task_mining.cumulativeEmission(12 * years) / TASK_POOL_WEI
    assert node == pytest.approx(1 - 2 ** (-years / 5), rel=1e-12)
    assert task == pytest.approx(float(task_cumulative(12 * years) / TASK_POOL_WEI), rel=1e-12)
