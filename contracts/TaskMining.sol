// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {FixedPointMathLib} from "solady/utils/FixedPointMathLib.sol";
import {CNXToken} from "./CNXToken.sol";
import {ITaskMining} from "./interfaces/IEmissionHooks.sol";
import {EmissionMath} from "./libraries/EmissionMath.sol";

/// @title Task mining: 40% of the CNX cap, paid by monthly epochs for successful tasks
/// @notice Month a runs from startTime + a * MONTH to startTime + (a + 1) * MONTH, with one month =
///         365.25 / 12 days = 2,629,800 s (EmissionMath.MONTH). Cumulative emission by the
///         start of month a follows the normalised Avrami curve
///         E_B(a) = pool * (1 - exp(-0.0003 ((0.5 a + 0.8)^2 - 0.8^2))), i.e. Crynux's
///         f(a) = 1 - exp(-0.0003 (0.5 a + 0.8)^2) rescaled to (f(a) - f(0)) / (1 - f(0)):
///         E_B(0) = 0 and E_B(a) -> pool. Month a's budget E_B(a + 1) - E_B(a) is shared by
///         the nodes in proportion to the successful tasks the market recorded for each in
///         that month (`recordSuccess`); a node claims its share once the month has ended.
/// @dev A month without tasks: its budget is not lost and not minted; it rolls over to the
///      next month that has at least one task. Concretely, the first task of month a fixes
///      that month's budget to E_B(a + 1) - E_B(b), where b is the first month whose budget
///      no earlier month with tasks took (the month after the previous month with tasks, or
///      0). Budgets of months with tasks therefore telescope: their sum is E_B(last month
///      with tasks + 1) <= pool, and budget from months after the last month with tasks
///      waits in the pool for the next task. Shares are rounded down (in favour of the pool).
///      Tasks recorded before startTime count in month 0. Unclaimed shares never expire.
contract TaskMining is ITaskMining, AccessControl {
    /// @notice Role of the callers of `recordSuccess` (the task market).
    bytes32 public constant REPORTER_ROLE = keccak256("REPORTER_ROLE");

    /// @notice How far before its deployment block the start may lie (a deploy script gives
    ///         both mining contracts the same start, read a few blocks earlier).
    uint256 public constant MAX_START_LAG = 1 days;

    /// @notice The length of a month (epoch) in seconds: 365.25 days / 12.
    uint256 public constant MONTH = EmissionMath.MONTH;

    /// @notice The token minted on claim (this contract must hold its MINTER_ROLE).
    CNXToken public immutable token;

    /// @notice The task-mining pool S_B: 40% of the cap, in wei. Never exceeded.
    uint256 public immutable pool;

    /// @notice Start of month 0 (unix seconds).
    uint256 public immutable startTime;

    /// @dev Per month: the first month of the curve whose budget it takes (set by its first
    ///      task) and its number of successful tasks. One slot.
    struct Month {
        uint32 budgetFrom;
        uint224 tasks;
    }

    mapping(uint256 month => Month) private _months;
    mapping(uint256 month => mapping(address node => uint256)) private _tasks;
    /// @dev The first month whose budget no month with tasks has taken yet.
    uint256 private _nextBudgetMonth;
    /// @dev What nodes have claimed (minted) so far.
    uint256 private _totalClaimed;

    /// @notice Emitted when the first task of a month fixes that month's budget.
    /// @param month The month.
    /// @param budgetFrom The first month of the curve whose budget it takes (< month when
    ///        earlier months had no tasks: their budgets roll over into this one).
    event MonthOpened(uint256 indexed month, uint256 budgetFrom);

    /// @notice Emitted for every successful task recorded.
    /// @param node The node credited.
    /// @param month The month it counts in.
    /// @param nodeTasks The node's number of successful tasks in that month so far.
    event SuccessRecorded(address indexed node, uint256 indexed month, uint256 nodeTasks);

    /// @notice Emitted when a node claims its share of a month's budget.
    /// @param node The node operator (receives the minted CNX).
    /// @param month The month claimed.
    /// @param nodeTasks The node's successful tasks in that month.
    /// @param amount Its share, in wei.
    event Claimed(address indexed node, uint256 indexed month, uint256 nodeTasks, uint256 amount);

    /// @notice Thrown when the token given at deployment is the zero address.
    error TaskMiningZeroToken();

    /// @notice Thrown when the admin given at deployment is the zero address.
    error TaskMiningZeroAdmin();

    /// @notice Thrown when the start time given at deployment lies more than MAX_START_LAG
    ///         before the deployment block.
    /// @param startTime The start time given.
    /// @param nowTime The deployment block's timestamp.
    error TaskMiningStartInPast(uint256 startTime, uint256 nowTime);

    /// @notice Thrown when a node claims a month that has not ended yet.
    /// @param month The month asked for.
    /// @param currentMonth The month now running.
    error TaskMiningMonthNotEnded(uint256 month, uint256 currentMonth);

    /// @notice Thrown when a node claims a month in which it has no unclaimed task.
    /// @param node The claiming node.
    /// @param month The month asked for.
    error TaskMiningNothingToClaim(address node, uint256 month);

    /// @param token_ The CNX token; grant this contract its MINTER_ROLE after deployment.
    /// @param admin Receives DEFAULT_ADMIN_ROLE (grants REPORTER_ROLE to the task market).
    /// @param startTime_ Start of month 0 (unix seconds); 0 = the deployment block; at most
    ///        MAX_START_LAG in the past.
    constructor(CNXToken token_, address admin, uint256 startTime_) {
        if (address(token_) == address(0)) revert TaskMiningZeroToken();
        if (admin == address(0)) revert TaskMiningZeroAdmin();
        uint256 start = startTime_ == 0 ? block.timestamp : startTime_;
        if (start + MAX_START_LAG < block.timestamp) revert TaskMiningStartInPast(startTime_, block.timestamp);
        token = token_;
        pool = (token_.CAP() * 2) / 5;
        startTime = start;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ------------------------------------------------------------------ hook

    /// @inheritdoc ITaskMining
    /// @dev Only REPORTER_ROLE. Counts one task for `node` in the current month; the month's
    ///      first task fixes its budget (rolling over the budgets of the months before it that
    ///      had no task). Constant gas whatever the number of nodes or tasks.
    function recordSuccess(address node) external onlyRole(REPORTER_ROLE) {
        uint256 month = currentMonth();
        Month storage m = _months[month];
        uint256 tasks = m.tasks;
        if (tasks == 0) {
            uint256 from = _nextBudgetMonth;
            // Month indices stay far below 2^32 (2^32 months = 340 million years).
            m.budgetFrom = uint32(from);
            _nextBudgetMonth = month + 1;
            emit MonthOpened(month, from);
        }
        m.tasks = uint224(tasks + 1);
        uint256 nodeTasks = _tasks[month][node] + 1;
        _tasks[month][node] = nodeTasks;
        emit SuccessRecorded(node, month, nodeTasks);
    }

    // ------------------------------------------------------------------ claim

    /// @notice Mints to the caller its share of each of the given months' budgets.
    /// @param months Months that have ended, in which the caller has unclaimed tasks.
    /// @return total The amount minted, in wei.
    function claim(uint256[] calldata months) external returns (uint256 total) {
        uint256 current = currentMonth();
        for (uint256 i; i < months.length; ++i) {
            uint256 month = months[i];
            if (month >= current) revert TaskMiningMonthNotEnded(month, current);
            uint256 nodeTasks = _tasks[month][msg.sender];
            if (nodeTasks == 0) revert TaskMiningNothingToClaim(msg.sender, month);
            Month memory m = _months[month];
            uint256 amount = FixedPointMathLib.fullMulDiv(_budget(month, m.budgetFrom), nodeTasks, m.tasks);
            delete _tasks[month][msg.sender];
            emit Claimed(msg.sender, month, nodeTasks, amount);
            total += amount;
        }
        _totalClaimed += total;
        if (total != 0) token.mint(msg.sender, total);
    }

    // ------------------------------------------------------------------ views

    /// @notice The month now running (0 before and during the first month).
    function currentMonth() public view returns (uint256) {
        return block.timestamp <= startTime ? 0 : (block.timestamp - startTime) / MONTH;
    }

    /// @notice Start of `month` (unix seconds); it ends at monthStart(month + 1).
    /// @param month The month index.
    function monthStart(uint256 month) external view returns (uint256) {
        return startTime + month * MONTH;
    }

    /// @notice A month's successful tasks, its budget and where the budget starts on the curve.
    /// @param month The month index.
    /// @return tasks Successful tasks recorded in that month.
    /// @return budget Its budget in wei: E_B(month + 1) - E_B(budgetFrom); 0 for a month
    ///         without tasks (its budget rolls over to the next month with tasks).
    /// @return budgetFrom First month of the curve whose budget it takes (0 without tasks).
    function monthInfo(uint256 month) external view returns (uint256 tasks, uint256 budget, uint256 budgetFrom) {
        Month memory m = _months[month];
        if (m.tasks == 0) return (0, 0, 0);
        return (m.tasks, _budget(month, m.budgetFrom), m.budgetFrom);
    }

    /// @notice Budget waiting for the next month with tasks, in wei: the curve's emission from
    ///         the first month no month with tasks has taken, up to the end of the current month
    ///         when it has no task yet, or up to its start when it has.
    function carriedBudget() external view returns (uint256) {
        uint256 current = currentMonth();
        uint256 upTo = _months[current].tasks == 0 ? current + 1 : current;
        uint256 from = _nextBudgetMonth;
        if (upTo <= from) return 0;
        return EmissionMath.taskCumulative(pool, upTo) - EmissionMath.taskCumulative(pool, from);
    }

    /// @notice The unclaimed successful tasks of `node` in `month` (0 once claimed).
    /// @param month The month index.
    /// @param node The node operator.
    function tasksOf(uint256 month, address node) external view returns (uint256) {
        return _tasks[month][node];
    }

    /// @notice What `node` could claim now for the given months (ended months only), in wei.
    /// @param node The node operator.
    /// @param months Distinct month indices; running months and months without its unclaimed
    ///        tasks count 0 (a month listed twice counts twice here, while `claim` reverts).
    function claimable(address node, uint256[] calldata months) external view returns (uint256 total) {
        uint256 current = currentMonth();
        for (uint256 i; i < months.length; ++i) {
            uint256 month = months[i];
            uint256 nodeTasks = _tasks[month][node];
            if (month >= current || nodeTasks == 0) continue;
            Month memory m = _months[month];
            total += FixedPointMathLib.fullMulDiv(_budget(month, m.budgetFrom), nodeTasks, m.tasks);
        }
    }

    /// @notice What nodes have claimed (minted) so far, in wei.
    function totalClaimed() external view returns (uint256) {
        return _totalClaimed;
    }

    /// @notice The curve: E_B(month), cumulative emission by the start of `month`, in wei.
    /// @param month The month index.
    function cumulativeEmission(uint256 month) external view returns (uint256) {
        return EmissionMath.taskCumulative(pool, month);
    }

    /// @dev Budget of a month with tasks: E_B(month + 1) - E_B(budgetFrom).
    function _budget(uint256 month, uint256 budgetFrom) private view returns (uint256) {
        return EmissionMath.taskCumulative(pool, month + 1) - EmissionMath.taskCumulative(pool, budgetFrom);
    }
}
