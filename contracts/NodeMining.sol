// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {FixedPointMathLib} from "solady/utils/FixedPointMathLib.sol";
import {CNXToken} from "./CNXToken.sol";
import {INodeMining} from "./interfaces/IEmissionHooks.sol";
import {EmissionMath} from "./libraries/EmissionMath.sol";

/// @title Node mining: 40% of the CNX cap, paid to online nodes in proportion to their weight
/// @notice Cumulative emission follows E_A(t) = pool * (1 - 2^(-t / 60 months)), a 5-year
///         half-life, with one month = 365.25 / 12 days = 2,629,800 s (EmissionMath.MONTH).
///         The registry reports every change of a node's weight (its QoS weight while
///         Available or Busy, zero otherwise) through `updateWeight`; between two changes
///         each node earns `weight / totalWeight` of what the curve emits. Nodes `claim`,
///         which mints what they earned. Every call is O(1) whatever the number of nodes:
///         a reward-per-unit-of-weight accumulator, as in staking-reward contracts.
/// @dev Zero total weight: t in E_A(t) is an *emission clock* that starts at startTime and only
///      runs while the total weight is positive. While no node is online, nothing is emitted
///      and the clock stands still, so that time's emission is not lost: it stays in the pool
///      and the schedule resumes where it stopped when a node comes back (the whole curve
///      shifts later by the downtime). The alternative, catching the curve up in one step,
///      would hand the whole backlog to the first node to come online; the stopped clock
///      gives no such windfall. With the network always online, t = now - startTime.
///      Rounding: the accumulator credits nodes with at most what the curve emitted (the
///      sub-wei remainder carries over to the next update) and every node's share is rounded
///      down, so the sum of all claims never exceeds E_A(t) <= pool.
contract NodeMining is INodeMining, AccessControl {
    /// @notice Role of the callers of `updateWeight` (the node registry).
    bytes32 public constant REPORTER_ROLE = keccak256("REPORTER_ROLE");

    /// @notice How far before its deployment block the start may lie (a deploy script gives
    ///         both mining contracts the same start, read a few blocks earlier).
    uint256 public constant MAX_START_LAG = 1 days;

    /// @notice Fixed-point scale of the reward-per-unit-of-weight accumulator.
    /// @dev 1e36, not 1e18: each update credits a multiple of totalWeight / ACC_PRECISION wei,
    ///      so with 1e18 a total weight near 2^100 lost ~1e-9 of a second's emission. With
    ///      weights below 2^128 the granularity is under 341 wei, and the accumulator stays
    ///      below pool * 1e36 < 2^212 whatever the time (no overflow).
    uint256 public constant ACC_PRECISION = 1e36;

    /// @notice The token minted on claim (this contract must hold its MINTER_ROLE).
    CNXToken public immutable token;

    /// @notice The node-mining pool S_A: 40% of the cap, in wei. Never exceeded.
    uint256 public immutable pool;

    /// @notice When the emission clock may start running (unix seconds).
    uint256 public immutable startTime;

    /// @dev Per node: its current weight and what it earned up to its last settlement
    ///      (one slot), and the accumulator value at that settlement.
    struct NodeAccount {
        uint128 weight;
        uint128 accrued;
        uint256 rewardPerWeightPaid;
    }

    mapping(address node => NodeAccount) private _nodes;
    uint256 private _totalWeight;
    /// @dev Reward per unit of weight since startTime, scaled by ACC_PRECISION.
    uint256 private _rewardPerWeight;
    /// @dev Timestamp of the last accumulator update (startTime before the first one).
    uint64 private _lastUpdate;
    /// @dev Seconds of emission clock elapsed up to `_lastUpdate`.
    uint64 private _clock;
    /// @dev What the accumulator has handed to nodes so far (<= E_A(_clock)).
    uint128 private _credited;
    /// @dev What nodes have claimed (minted) so far.
    uint256 private _totalClaimed;

    /// @notice Emitted when the registry changes a node's weight.
    /// @param node The node operator.
    /// @param oldWeight Its weight before.
    /// @param newWeight Its weight from now on.
    /// @param totalWeight The sum of all weights from now on.
    event WeightUpdated(address indexed node, uint256 oldWeight, uint256 newWeight, uint256 totalWeight);

    /// @notice Emitted when a node claims its node-mining reward.
    /// @param node The node operator (receives the minted CNX).
    /// @param amount Amount minted, in wei.
    event Claimed(address indexed node, uint256 amount);

    /// @notice Thrown when the token given at deployment is the zero address.
    error NodeMiningZeroToken();

    /// @notice Thrown when the admin given at deployment is the zero address.
    error NodeMiningZeroAdmin();

    /// @notice Thrown when the start time given at deployment lies more than MAX_START_LAG
    ///         before the deployment block.
    /// @param startTime The start time given.
    /// @param nowTime The deployment block's timestamp.
    error NodeMiningStartInPast(uint256 startTime, uint256 nowTime);

    /// @notice Thrown when a reported weight does not fit in 128 bits.
    /// @param node The node reported.
    /// @param weight The weight reported.
    error NodeMiningWeightTooLarge(address node, uint256 weight);

    /// @notice Thrown when a node claims while it has nothing to claim.
    /// @param node The claiming node.
    error NodeMiningNothingToClaim(address node);

    /// @param token_ The CNX token; grant this contract its MINTER_ROLE after deployment.
    /// @param admin Receives DEFAULT_ADMIN_ROLE (grants REPORTER_ROLE to the registry).
    /// @param startTime_ When emission may start (unix seconds); 0 = the deployment block. A
    ///        start up to MAX_START_LAG in the past changes nothing: the clock only runs once
    ///        a node has a weight.
    constructor(CNXToken token_, address admin, uint256 startTime_) {
        if (address(token_) == address(0)) revert NodeMiningZeroToken();
        if (admin == address(0)) revert NodeMiningZeroAdmin();
        uint256 start = startTime_ == 0 ? block.timestamp : startTime_;
        if (start + MAX_START_LAG < block.timestamp) revert NodeMiningStartInPast(startTime_, block.timestamp);
        token = token_;
        pool = (token_.CAP() * 2) / 5;
        startTime = start;
        _lastUpdate = uint64(start);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ------------------------------------------------------------------ hooks

    /// @inheritdoc INodeMining
    /// @dev Only REPORTER_ROLE. Settles the accumulator and the node up to now, then applies
    ///      the new weight. Constant gas whatever the number of nodes.
    function updateWeight(address node, uint256 weight) external onlyRole(REPORTER_ROLE) {
        if (weight > type(uint128).max) revert NodeMiningWeightTooLarge(node, weight);
        uint256 rpw = _accrue();
        NodeAccount storage account = _nodes[node];
        uint256 oldWeight = account.weight;
        uint256 accrued = account.accrued;
        if (oldWeight != 0) {
            accrued += FixedPointMathLib.fullMulDiv(oldWeight, rpw - account.rewardPerWeightPaid, ACC_PRECISION);
        }
        // accrued <= pool < 2^128; weight checked above.
        account.weight = uint128(weight);
        account.accrued = uint128(accrued);
        account.rewardPerWeightPaid = rpw;
        uint256 total = _totalWeight - oldWeight + weight;
        _totalWeight = total;
        emit WeightUpdated(node, oldWeight, weight, total);
    }

    // ------------------------------------------------------------------ claim

    /// @notice Mints to the caller everything its node earned up to now.
    /// @return amount The amount minted, in wei.
    function claim() external returns (uint256 amount) {
        uint256 rpw = _accrue();
        NodeAccount storage account = _nodes[msg.sender];
        amount = account.accrued
            + FixedPointMathLib.fullMulDiv(account.weight, rpw - account.rewardPerWeightPaid, ACC_PRECISION);
        // slither-disable-next-line incorrect-equality
        if (amount == 0) revert NodeMiningNothingToClaim(msg.sender);
        account.accrued = 0;
        account.rewardPerWeightPaid = rpw;
        _totalClaimed += amount;
        emit Claimed(msg.sender, amount);
        token.mint(msg.sender, amount);
    }

    // ------------------------------------------------------------------ views

    /// @notice What `node` could claim now, in wei.
    /// @param node The node operator.
    function claimable(address node) external view returns (uint256) {
        (uint256 rpw,,) = _pending();
        NodeAccount storage account = _nodes[node];
        return account.accrued
            + FixedPointMathLib.fullMulDiv(account.weight, rpw - account.rewardPerWeightPaid, ACC_PRECISION);
    }

    /// @notice The current mining weight of `node` (0 when not online).
    /// @param node The node operator.
    function weightOf(address node) external view returns (uint256) {
        return _nodes[node].weight;
    }

    /// @notice The sum of the weights of all nodes.
    function totalWeight() external view returns (uint256) {
        return _totalWeight;
    }

    /// @notice Seconds of emission clock elapsed by now (time since startTime during which at
    ///         least one node had a positive weight).
    function emissionClock() external view returns (uint256 clock) {
        (, clock,) = _pending();
    }

    /// @notice What the curve has emitted to nodes by now (claimed or not), in wei:
    ///         E_A(emissionClock()) less a carried-over remainder of a few wei.
    function emitted() external view returns (uint256 credited) {
        (,, credited) = _pending();
    }

    /// @notice What nodes have claimed (minted) so far, in wei.
    function totalClaimed() external view returns (uint256) {
        return _totalClaimed;
    }

    /// @notice The curve: E_A(elapsed) = pool * (1 - 2^(-elapsed / 60 months)), in wei.
    /// @param elapsed Seconds of emission clock.
    function cumulativeEmission(uint256 elapsed) external view returns (uint256) {
        return EmissionMath.nodeCumulative(pool, elapsed);
    }

    // ------------------------------------------------------------------ internals

    /// @dev Brings the accumulator up to now; returns the reward per unit of weight.
    function _accrue() private returns (uint256 rpw) {
        uint256 last = _lastUpdate;
        rpw = _rewardPerWeight;
        if (block.timestamp <= last) return rpw; // same block, or before startTime
        (uint256 newRpw, uint256 clock, uint256 credited) = _pending();
        _lastUpdate = uint64(block.timestamp);
        if (clock != _clock) {
            // Timestamps and clock < 2^64 s; credited <= pool < 2^128.
            _clock = uint64(clock);
            _credited = uint128(credited);
        }
        if (newRpw != rpw) {
            _rewardPerWeight = newRpw;
            rpw = newRpw;
        }
    }

    /// @dev The accumulator, emission clock and credited total as they would be now.
    ///      With zero total weight the clock does not advance (see the contract's notes).
    function _pending() private view returns (uint256 rpw, uint256 clock, uint256 credited) {
        rpw = _rewardPerWeight;
        clock = _clock;
        credited = _credited;
        uint256 last = _lastUpdate;
        uint256 total = _totalWeight;
        if (block.timestamp <= last || total == 0) return (rpw, clock, credited);
        clock += block.timestamp - last;
        uint256 target = EmissionMath.nodeCumulative(pool, clock);
        if (target <= credited) return (rpw, clock, credited);
        uint256 increment = FixedPointMathLib.fullMulDiv(target - credited, ACC_PRECISION, total);
        rpw += increment;
        // Credit what the increment pays out at most (rounded up): <= target - credited,
        // and >= the sum of the nodes' rounded-down shares. The rest carries over.
        credited += FixedPointMathLib.fullMulDivUp(increment, total, ACC_PRECISION);
    }
}
