// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title The node registry as the task market sees it
/// @notice The market-facing part of the registry: locking nodes into tasks, releasing them
///         with a task score, settling audited tasks and slashing. The registry
///         implementation extends this interface with joining, staking, parameters, views,
///         errors and events; these functions and their meaning are fixed.
interface INodeRegistry {
    /// @notice Node states (mirrored in crynux_common/enums.py as NodeStatus).
    enum NodeStatus {
        None,
        Available,
        Busy,
        PendingPause,
        Paused,
        PendingQuit,
        Quit
    }

    /// @notice What a task needs from a node.
    /// @param minVram Minimum VRAM in GB.
    /// @param gpu keccak256 of the required GPU name, or 0 for any GPU. When set, the node's
    ///        GPU must be this one and its VRAM must equal minVram exactly.
    /// @param localModel keccak256 of the model ID that earns the locality bonus (the task's
    ///        base model), or 0 for none. Nodes holding it weigh twice in selection.
    struct Requirement {
        uint16 minVram;
        bytes32 gpu;
        bytes32 localModel;
    }

    /// @notice Picks an Available node meeting `req` at random, weighted by QoS (x2 for
    ///         holders of req.localModel), never `excludeA` or `excludeB`, and locks it
    ///         (Busy, one more unsettled task). Only the task market. O(log n) or better.
    /// @param seed Randomness (the market mixes block.prevrandao with the task id).
    /// @return node The chosen node, or address(0) when no node is eligible.
    function lockRandom(Requirement calldata req, uint256 seed, address excludeA, address excludeB)
        external
        returns (address node);

    /// @notice Locks a given Available node into a task (the node pulled it from the queue):
    ///         Busy, one more unsettled task. Only the task market.
    function lock(address node) external;

    /// @notice Ends the node's Busy spell and applies `taskScore` (10, 6 or 0) to its QoS.
    ///         A PendingPause node becomes Paused, a PendingQuit node Quit; a node whose QoS
    ///         falls below the kick-out line is kicked out. When `settled` is true the task is
    ///         closed for this node too (one fewer unsettled task); otherwise it stays open
    ///         until settle(). Only the task market.
    /// @return available True when the node is Available again (the market may hand it work).
    function release(address node, uint8 taskScore, bool settled) external returns (bool available);

    /// @notice Closes one unsettled task of the node (its audited task was judged). A node that
    ///         has quit gets its stake back when its last unsettled task closes. Only the market.
    function settle(address node) external;

    /// @notice Slashes slashBps of the node's stake: half is sent to the caller (the market's
    ///         audit pool), half to the treasury. The node leaves selection for good (Quit);
    ///         what is left of its stake is returned once it has no unsettled task.
    ///         Closes one unsettled task of the node (the one it is slashed for). Only the market.
    /// @return toAuditPool The amount sent to the caller.
    function slash(address node) external returns (uint256 toAuditPool);

    /// @notice True when the node is Available and meets `req`.
    function isEligible(address node, Requirement calldata req) external view returns (bool);

    /// @notice The node's declared hardware.
    function hardware(address node) external view returns (bytes32 gpu, uint16 vram);
}

/// @notice Callback from the registry to the market when a node becomes Available through a
///         registry call (join, resume): the market may give it a pending audit or the
///         best queued task it is eligible for (calling lock()).
interface INodeAvailableHook {
    function onNodeAvailable(address node) external;
}
