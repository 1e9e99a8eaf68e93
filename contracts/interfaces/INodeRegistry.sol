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

    /// @notice Governance parameters, packed in one storage slot.
    /// @param minStake Minimum stake to join, in CNX wei (400 CNX).
    /// @param slashBps Share of the stake taken by slash(), in basis points (10000 = all).
    /// @param kickQos QoS (fixed point, 1e6 = 1.0) below which a node is kicked out (4e6).
    /// @param minTasksForKick Tasks a node must have done before it can be kicked out (20).
    /// @param qosWindow The EMA runs over this many tasks: alpha = 1 / qosWindow (50).
    /// @param versionMajor The client major version of the network: nodes must have it.
    /// @param minMinor Minimum client minor version (with minPatch: minor.patch >= minMinor.minPatch).
    /// @param minPatch Minimum client patch version (compared when the minor equals minMinor).
    /// @param maxGroups Maximum number of hardware groups (gpu, vram); selection reads one
    ///        storage slot per group, so this bounds its gas (at most 255).
    /// @param maxModels Maximum number of models a node may declare.
    struct Params {
        uint96 minStake;
        uint16 slashBps;
        uint24 kickQos;
        uint16 minTasksForKick;
        uint16 qosWindow;
        uint16 versionMajor;
        uint16 minMinor;
        uint16 minPatch;
        uint8 maxGroups;
        uint8 maxModels;
    }

    /// @notice Everything the registry knows about a node (view only).
    struct NodeInfo {
        NodeStatus status;
        uint256 stake;
        uint256 qos;
        uint256 weight;
        bytes32 gpu;
        uint16 vram;
        uint16 major;
        uint16 minor;
        uint16 patch;
        uint256 taskCount;
        uint256 unsettled;
        bytes32[] models;
    }

    // ------------------------------------------------------------------ errors

    /// @notice Thrown when a market-only function is called by anyone but the task market.
    error NotMarket(address caller);
    /// @notice Thrown when a required address (token, admin, treasury) is zero.
    error ZeroAddress();
    /// @notice Thrown when the stake offered at join is below minStake.
    error StakeTooLow(uint256 stake, uint256 minStake);
    /// @notice Thrown when the stake offered at join does not fit the registry's 96-bit field.
    error StakeTooHigh(uint256 stake, uint256 maxStake);
    /// @notice Thrown when a node joins with an empty GPU name.
    error EmptyGpuName();
    /// @notice Thrown when a node declares zero VRAM.
    error InvalidVram(uint16 vram);
    /// @notice Thrown when a client version breaks the network's version rule
    ///         (major == versionMajor and minor.patch >= minMinor.minPatch).
    error VersionNotAllowed(
        uint16 major, uint16 minor, uint16 patch, uint16 versionMajor, uint16 minMinor, uint16 minPatch
    );
    /// @notice Thrown when a node would hold more than maxModels models.
    error TooManyModels(uint256 count, uint256 maxModels);
    /// @notice Thrown when a model is declared twice or added while already held.
    error DuplicateModel(bytes32 model);
    /// @notice Thrown when a zero model hash is declared.
    error ZeroModel();
    /// @notice Thrown when a node removes a model it does not hold.
    error ModelNotHeld(bytes32 model);
    /// @notice Thrown when a join would create a hardware group beyond maxGroups.
    error TooManyHardwareGroups(uint256 maxGroups);
    /// @notice Thrown when a (hardware group, QoS level) set is full (2^20 - 1 Available nodes).
    error GroupLevelFull(uint256 groupId, uint256 level);
    /// @notice Thrown when a node that is already registered (not Quit) joins again.
    error AlreadyJoined(address node, NodeStatus status);
    /// @notice Thrown when a quit node tries to rejoin while tasks it executed are still open
    ///         to audit (its old stake is returned when the last one settles).
    error UnsettledTasks(address node, uint256 unsettled);
    /// @notice Thrown when pause() is called by a node that is not Available or Busy.
    error CannotPause(address node, NodeStatus status);
    /// @notice Thrown when resume() is called by a node that is not Paused or PendingPause.
    error CannotResume(address node, NodeStatus status);
    /// @notice Thrown when quit() is called by a node that is not Available, Busy,
    ///         PendingPause or Paused.
    error CannotQuit(address node, NodeStatus status);
    /// @notice Thrown when a node that is not registered (None or Quit) updates its models or version.
    error NodeNotActive(address node, NodeStatus status);
    /// @notice Thrown when lock() is given a node that is not Available.
    error NodeNotAvailable(address node, NodeStatus status);
    /// @notice Thrown when release() is given a node that is not in a task
    ///         (Busy, PendingPause, PendingQuit, or Quit after a slash while Busy).
    error NodeNotBusy(address node, NodeStatus status);
    /// @notice Thrown when a task score above 10 is given to release().
    error InvalidTaskScore(uint8 score);
    /// @notice Thrown when settle() or slash() is called for a node without an unsettled task.
    error NoUnsettledTask(address node);
    /// @notice Thrown when setParams() gets slashBps above 10000.
    error InvalidSlashBps(uint16 slashBps);
    /// @notice Thrown when setParams() gets a qosWindow of zero.
    error InvalidQosWindow(uint16 qosWindow);
    /// @notice Thrown when setParams() gets a kick-out line above the maximum QoS (10e6).
    error InvalidKickQos(uint24 kickQos);
    /// @notice Thrown when setParams() gets a zero minStake.
    error InvalidMinStake(uint96 minStake);
    /// @notice Thrown when setParams() sets maxGroups below the groups that exist.
    error InvalidMaxGroups(uint8 maxGroups, uint256 existingGroups);

    // ------------------------------------------------------------------ events

    /// @notice A node joined (or rejoined) with `stake`; it is Available, with QoS 10 on a first
    ///         join and the QoS it left with on a rejoin.
    event NodeJoined(
        address indexed node,
        uint256 stake,
        bytes32 indexed gpu,
        string gpuName,
        uint16 vram,
        uint16[3] version,
        bytes32[] models
    );
    /// @notice A node changed status through pause, resume, quit, lock or slash. (release()
    ///         reports the status it leaves the node in through NodeReleased.)
    event NodeStatusChanged(address indexed node, NodeStatus status);
    /// @notice The market released a node from a task: its QoS after the task score and its
    ///         new status.
    event NodeReleased(address indexed node, uint8 taskScore, uint256 qos, NodeStatus status);
    /// @notice One unsettled task of the node was closed; `unsettled` are left.
    event NodeSettled(address indexed node, uint256 unsettled);
    /// @notice The node's QoS fell below kickQos after at least minTasksForKick tasks: it is Quit.
    event NodeKickedOut(address indexed node, uint256 qos, uint256 taskCount);
    /// @notice The node was slashed: `amount` taken, split between the audit pool and the treasury.
    event NodeSlashed(address indexed node, uint256 amount, uint256 toAuditPool, uint256 toTreasury);
    /// @notice The node's stake (what is left of it) was sent back to it.
    event StakeReturned(address indexed node, uint256 amount);
    /// @notice A node changed its model list (keccak256 of the model ID strings).
    event ModelsUpdated(address indexed node, bytes32[] added, bytes32[] dropped);
    /// @notice A node declared a new client version.
    event VersionUpdated(address indexed node, uint16 major, uint16 minor, uint16 patch);
    /// @notice A new hardware group (gpu, vram) was created by a join.
    event HardwareGroupCreated(uint256 indexed groupId, bytes32 indexed gpu, string gpuName, uint16 vram);
    /// @notice Governance changed the parameters.
    event ParamsChanged(Params params);
    /// @notice Governance changed the task market address.
    event MarketChanged(address indexed previousMarket, address indexed newMarket);
    /// @notice Governance changed the node-mining hook address (0 = off).
    event NodeMiningChanged(address indexed previousNodeMining, address indexed newNodeMining);
    /// @notice The market took `amount` of the node's stake into its audit pool (penalize).
    event NodePenalized(address indexed node, uint256 amount);
    /// @notice Governance changed the treasury.
    event TreasuryChanged(address indexed previousTreasury, address indexed newTreasury);

    /// @notice Picks an Available node meeting `req` at random, weighted by QoS (x2 for
    ///         holders of req.localModel), never `excludeA` or `excludeB`, and locks it
    ///         (Busy, one more unsettled task). Only the task market. O(log n) or better.
    /// @param seed Randomness (the market mixes block.prevrandao with the task id).
    /// @return node The chosen node, or address(0) when no node is eligible.
    function lockRandom(Requirement calldata req, uint256 seed, address excludeA, address excludeB)
        external
        returns (address node);

    /// @notice lockRandom for an auditor: only nodes online (joined or resumed) before block
    ///         `onlineBefore` are drawn, so a node that joins or resumes after seeing a task's
    ///         commitment never audits it. Only the task market.
    /// @param onlineBefore The first block whose joiners and resumers are not drawn.
    /// @return node The chosen node, or address(0) when no node is eligible.
    function lockAuditor(
        Requirement calldata req,
        uint256 seed,
        address excludeA,
        address excludeB,
        uint256 onlineBefore
    ) external returns (address node);

    /// @notice Registered (not Quit) nodes of the hardware group (gpu, vram); 0 if no such group.
    function groupNodes(bytes32 gpu, uint16 vram) external view returns (uint256);

    /// @notice The block in which the node last joined or resumed (0 if never).
    function onlineSince(address node) external view returns (uint256);

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

    /// @notice Takes up to `amount` of the node's stake and sends it to the caller (the market's
    ///         audit pool): the price of committing to a result and not delivering it. The node
    ///         keeps its status. Only the market.
    /// @return taken What was taken (less than `amount` when the stake is smaller).
    function penalize(address node, uint256 amount) external returns (uint256 taken);

    /// @notice The node's declared hardware.
    function hardware(address node) external view returns (bytes32 gpu, uint16 vram);
}

/// @notice Callback from the registry to the market when a node becomes Available through a
///         registry call (join, resume): the market may give it a pending audit or the
///         best queued task it is eligible for (calling lock()).
interface INodeAvailableHook {
    function onNodeAvailable(address node) external;
}

/// @title The rest of the registry: joining, staking, node controls, views and governance
/// @notice Kept apart from INodeRegistry so that anything implementing the market-facing part
///         (a test double, say) need not implement these.
interface INodeRegistryFull is INodeRegistry {
    /// @notice Joins (or rejoins after quitting) with `stake` CNX pulled by transferFrom
    ///         (approve first). The node becomes Available (QoS 10 on a first join; a rejoin
    ///         keeps the QoS and task count it left with).
    /// @param stake Stake in CNX wei, at least minStake.
    /// @param gpuName GPU model name, stored as keccak256(bytes(gpuName)) and emitted as is.
    /// @param vram VRAM in whole GB.
    /// @param version Client version [major, minor, patch], checked against the version rule.
    /// @param models keccak256 of each model ID the node holds locally.
    function join(
        uint256 stake,
        string calldata gpuName,
        uint16 vram,
        uint16[3] calldata version,
        bytes32[] calldata models
    ) external;

    /// @notice join() in one transaction with an EIP-2612 permit of `stake` CNX to the
    ///         registry. A permit that fails (e.g. already used by a front-runner) is ignored;
    ///         the transfer then needs an allowance.
    function joinWithPermit(
        uint256 stake,
        string calldata gpuName,
        uint16 vram,
        uint16[3] calldata version,
        bytes32[] calldata models,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;

    /// @notice Removes then adds models (keccak256 of model IDs) to the caller's list.
    function updateModels(bytes32[] calldata add, bytes32[] calldata remove) external;

    /// @notice Declares a new client version for the caller (it must meet the version rule).
    function updateVersion(uint16[3] calldata version) external;

    /// @notice Available -> Paused (out of selection); Busy -> PendingPause (Paused when the task ends).
    function pause() external;

    /// @notice Paused -> Available (the market is told, and may hand it work);
    ///         PendingPause -> Busy (the pending pause is cancelled).
    function resume() external;

    /// @notice Available or Paused -> Quit, stake returned when no task is unsettled (else on the
    ///         last settle); Busy or PendingPause -> PendingQuit (Quit when the task ends).
    function quit() external;

    /// @notice The node picked for `req` and `seed` by lockRandom, without locking it.
    function previewSelect(Requirement calldata req, uint256 seed, address excludeA, address excludeB)
        external
        view
        returns (address node);

    /// @notice Everything about a node: status, stake, QoS, weight, hardware, version, counts, models.
    function nodeInfo(address node) external view returns (NodeInfo memory info);

    /// @notice The node's status.
    function statusOf(address node) external view returns (NodeStatus);

    /// @notice The node's QoS, fixed point (1e6 = 1.0, max 10e6).
    function qosOf(address node) external view returns (uint256);

    /// @notice The node's selection (and mining) weight: its QoS rounded to an integer 0..10
    ///         while Available/Busy/PendingPause/PendingQuit, 0 otherwise.
    function weightOf(address node) external view returns (uint256);

    /// @notice True when the node declared the model (keccak256 of its ID).
    function hasModel(address node, bytes32 model) external view returns (bool);

    /// @notice Node counts indexed by NodeStatus (index 0 = addresses that ever joined).
    function countsByStatus() external view returns (uint256[7] memory counts);

    /// @notice Number of addresses that ever joined.
    function totalNodes() external view returns (uint256);

    /// @notice Hardware groups: GPU hash, VRAM, registered (not Quit) and Available node counts.
    function hardwareGroups()
        external
        view
        returns (bytes32[] memory gpus, uint16[] memory vrams, uint256[] memory nodes, uint256[] memory available);

    /// @notice The current parameters.
    function params() external view returns (Params memory);

    /// @notice Replaces all parameters (governance). Emits ParamsChanged.
    function setParams(Params calldata newParams) external;

    /// @notice Sets the task market, the only caller of lockRandom/lock/release/settle/slash (governance).
    function setMarket(address newMarket) external;

    /// @notice Sets the optional node-mining hook (0 = off) (governance).
    function setNodeMining(address newNodeMining) external;

    /// @notice Sets the treasury that receives half of every slash (governance).
    function setTreasury(address newTreasury) external;
}
