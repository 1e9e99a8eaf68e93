// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Hooks through which the registry and the task market feed the emission contracts
/// @notice The registry and the market hold an optional address of each (zero = emission off)
///         and call these hooks; the emission contracts only trust the callers they were told.

/// @notice Node mining (40% of the cap): accrues to online nodes in proportion to a weight.
interface INodeMining {
    /// @notice Called by the registry whenever a node's mining weight changes: its QoS weight
    ///         while Available or Busy (PendingPause/PendingQuit count as Busy), zero when
    ///         Paused, Quit, kicked out or slashed. Settles the node's accrual up to now first.
    /// @param node The node operator's address.
    /// @param weight The new weight (the registry's selection weight of the node, or 0).
    function updateWeight(address node, uint256 weight) external;
}

/// @notice Task mining (40% of the cap): monthly budgets shared by successful task counts.
interface ITaskMining {
    /// @notice Called by the task market each time `node` completes a task successfully
    ///         (as executor, or as an auditor that agreed with the outcome).
    /// @param node The node operator's address.
    function recordSuccess(address node) external;
}
