// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {FixedPointMathLib} from "solady/utils/FixedPointMathLib.sol";

/// @title The two emission curves of CNX (node mining and task mining)
/// @notice Pure fixed-point math shared by NodeMining and TaskMining. The Python reference
///         implementation of the same curves is tests/reference/emission.py; the two must
///         agree to a relative error of 1e-9 (tests/emission/test_curves.py).
/// @dev Exponentials come from solady's FixedPointMathLib.expWad (18-decimal fixed point),
///      whose absolute error is a few 1e-18. Where 1 - e^-x is so small that this error would
///      matter relative to the result, node mining uses a Taylor series in 36-decimal fixed
///      point instead. Every result is rounded down (in favour of the pool).
library EmissionMath {
    /// @notice One month of the emission schedules: a Julian year / 12 = 365.25 days / 12
    ///         = 30.4375 days = 2,629,800 seconds. Both contracts use this same month.
    uint256 internal constant MONTH = 2_629_800;

    /// @notice Half-life of node mining: 60 months = 5 Julian years = 157,788,000 seconds.
    uint256 internal constant HALF_LIFE = 60 * MONTH;

    /// @notice Task mining's month after which its curve has reached the whole pool in
    ///         18-decimal arithmetic (expWad(-x) is 0 for x >= 41.45; x(742) = 41.47).
    uint256 internal constant TASK_LAST_MONTH = 742;

    uint256 private constant _WAD = 1e18;
    uint256 private constant _E36 = 1e36;
    /// @dev ln 2 in 36-decimal fixed point (rounded down).
    uint256 private constant _LN2_E36 = 693147180559945309417232121458176568;
    /// @dev Below x = 1e-3 (36 decimals) node mining uses the series; its error is < x^4/120.
    uint256 private constant _SERIES_BELOW = 1e33;
    /// @dev Past 100 half-lives 2^-t is far below 1e-18: the whole pool has been emitted.
    uint256 private constant _NODE_END = 100 * HALF_LIFE;
    /// @dev Task mining exponent per month index, scaled: x(a) = (30 a^2 + 96 a) * 2.5e12 (wad).
    uint256 private constant _TASK_X_UNIT = 2_500_000_000_000;

    /// @notice Cumulative node-mining emission after `elapsed` seconds of emission clock:
    ///         E_A(t) = pool * (1 - 2^(-t / HALF_LIFE)) = pool * (1 - e^(-t ln2 / HALF_LIFE)).
    /// @param pool The node-mining pool S_A (40% of the cap), in wei.
    /// @param elapsed Seconds of emission clock.
    /// @return The amount emitted by then, in wei, rounded down; never more than `pool`.
    function nodeCumulative(uint256 pool, uint256 elapsed) internal pure returns (uint256) {
        if (elapsed == 0) return 0;
        if (elapsed >= _NODE_END) return pool;
        // x = t ln2 / T in 36 decimals; t < 100 T keeps t * ln2 far from overflow.
        uint256 x = (elapsed * _LN2_E36) / HALF_LIFE;
        if (x < _SERIES_BELOW) {
            // 1 - e^-x = x (1 - x/2 (1 - x/3 (1 - x/4))) - O(x^5/120): the truncated
            // alternating series is a lower bound, so rounding stays in favour of the pool.
            // Horner steps in 36 decimals: each truncation costs < 1e-36, far below the
            // series' own error, so dividing before multiplying is harmless here.
            // slither-disable-start divide-before-multiply
            uint256 s = _E36 - x / 4;
            s = _E36 - (x * s) / (3 * _E36);
            s = _E36 - (x * s) / (2 * _E36);
            return FixedPointMathLib.fullMulDiv(pool, (x * s) / _E36, _E36);
            // slither-disable-end divide-before-multiply
        }
        // x / 1e18 < 70e18 fits in int256.
        uint256 e = uint256(FixedPointMathLib.expWad(-int256(x / _WAD)));
        return FixedPointMathLib.fullMulDiv(pool, _WAD - e, _WAD);
    }

    /// @notice Cumulative task-mining emission by the start of month `month` (Avrami curve):
    ///         f(a) = 1 - exp(-k (0.5 a + 0.8)^2) with k = 0.0003, normalised as
    ///         E_B(a) = pool * (f(a) - f(0)) / (1 - f(0)) = pool * (1 - exp(-k (a^2/4 + 0.8 a))),
    ///         so that E_B(0) = 0 and E_B(a) -> pool as a -> infinity. The exponent is exact in
    ///         18 decimals: k (a^2/4 + 0.8 a) = (30 a^2 + 96 a) * 2.5e-6.
    /// @param pool The task-mining pool S_B (40% of the cap), in wei.
    /// @param month The month index a (0 = the first month).
    /// @return The amount emitted by the start of month `month`, in wei, rounded down.
    function taskCumulative(uint256 pool, uint256 month) internal pure returns (uint256) {
        if (month == 0) return 0;
        if (month >= TASK_LAST_MONTH) return pool;
        uint256 x = (30 * month * month + 96 * month) * _TASK_X_UNIT;
        // x < 42e18 fits in int256.
        uint256 e = uint256(FixedPointMathLib.expWad(-int256(x)));
        return FixedPointMathLib.fullMulDiv(pool, _WAD - e, _WAD);
    }
}
