"""Reference implementation of the two CNX emission curves (docs/protocol.md, "Emission").

Exact to 50 significant digits (``decimal``), independent of the contracts' fixed-point
math (contracts/libraries/EmissionMath.sol), which must agree to a relative error of 1e-9.

Node mining (pool S_A = 40% of the cap), over seconds of emission clock t:
    E_A(t) = S_A * (1 - 2 ** (-t / HALF_LIFE)),  HALF_LIFE = 60 months.
Task mining (pool S_B = 40% of the cap), over month indices a = 0, 1, 2, ...:
    f(a)   = 1 - exp(-K * (0.5 a + 0.8) ** 2)               (Crynux's draft, K = 0.0003)
    E_B(a) = S_B * (f(a) - f(0)) / (1 - f(0))
           = S_B * (1 - exp(-K * ((0.5 a + 0.8) ** 2 - 0.8 ** 2)))
so that E_B(0) = 0 and E_B(a) -> S_B; month a's budget is E_B(a + 1) - E_B(a).
One month = 365.25 / 12 days = 2,629,800 seconds, for both curves.
"""
from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, localcontext

CNX = 10**18
CAP_WEI = 8_617_333_262 * CNX
GENESIS_WEI = CAP_WEI // 5
NODE_POOL_WEI = CAP_WEI * 2 // 5
TASK_POOL_WEI = CAP_WEI * 2 // 5

DAY_SECONDS = 86_400
MONTH_SECONDS = 2_629_800  # 365.25 days / 12
YEAR_SECONDS = 12 * MONTH_SECONDS  # a Julian year, 365.25 days
HALF_LIFE_SECONDS = 60 * MONTH_SECONDS  # 5 Julian years

TASK_K = Decimal("0.0003")
TASK_SCALE = Decimal("0.5")
TASK_OFFSET = Decimal("0.8")

_PRECISION = 50


def node_cumulative(elapsed_seconds: int | Decimal, pool: int = NODE_POOL_WEI) -> Decimal:
    """E_A(t): node-mining emission after ``elapsed_seconds`` of emission clock, in wei."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        t = Decimal(elapsed_seconds)
        if t <= 0:
            return Decimal(0)
        return Decimal(pool) * (1 - (-(t / HALF_LIFE_SECONDS) * Decimal(2).ln()).exp())


def crynux_f(month: int | Decimal) -> Decimal:
    """Crynux's un-normalised draft curve f(a) = 1 - exp(-K (0.5 a + 0.8)^2)."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        u = TASK_SCALE * Decimal(month) + TASK_OFFSET
        return 1 - (-TASK_K * u * u).exp()


def task_cumulative(month: int | Decimal, pool: int = TASK_POOL_WEI) -> Decimal:
    """E_B(a): task-mining emission by the start of month ``month``, in wei."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        u = TASK_SCALE * Decimal(month) + TASK_OFFSET
        return Decimal(pool) * (1 - (-TASK_K * (u * u - TASK_OFFSET * TASK_OFFSET)).exp())


def task_month_budget(month: int, pool: int = TASK_POOL_WEI) -> Decimal:
    """The curve's budget of month ``month``: E_B(a + 1) - E_B(a), in wei."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return task_cumulative(month + 1, pool) - task_cumulative(month, pool)


def task_budgets_with_rollover(months_with_tasks: Iterable[int], pool: int = TASK_POOL_WEI) -> dict[int, Decimal]:
    """Budgets of the months that had tasks, under the roll-over rule of TaskMining.sol.

    A month without tasks passes its budget to the next month with tasks, so month a with
    tasks gets E_B(a + 1) - E_B(b), b = 1 + the previous month with tasks (or 0).
    """
    budgets: dict[int, Decimal] = {}
    start = 0
    for month in sorted(set(months_with_tasks)):
        budgets[month] = task_cumulative(month + 1, pool) - task_cumulative(start, pool)
        start = month + 1
    return budgets


def total_supply(seconds: int) -> Decimal:
    """Total supply ``seconds`` after the start if the network is always online and every
    reward is claimed as soon as it can be: genesis + E_A(t) + E_B(completed months)."""
    return GENESIS_WEI + node_cumulative(seconds) + task_cumulative(seconds // MONTH_SECONDS)


def relative_error(actual: int | Decimal, expected: int | Decimal) -> Decimal:
    """|actual - expected| / |expected| (0 when both are 0)."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        a, e = Decimal(actual), Decimal(expected)
        if e == 0:
            return abs(a)
        return abs(a - e) / abs(e)
