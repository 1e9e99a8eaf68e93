// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {INodeRegistry, INodeRegistryFull, INodeAvailableHook} from "./interfaces/INodeRegistry.sol";
import {INodeMining} from "./interfaces/IEmissionHooks.sol";
import {NodeSelection} from "./libraries/NodeSelection.sol";

/// @title Node registry: staking, node states, QoS and weighted random selection
/// @notice Nodes stake CNX and declare their hardware, client version and models; the task
///         market locks them into tasks, releases them with a task score (which feeds an
///         exponential moving average of QoS), settles their audited tasks and slashes them.
///
/// @dev Selection structure (see NodeSelection): Available nodes live in dense sets, one per
///      (hardware group, QoS level); a group is a (gpu, vram) pair and the level, the node's
///      QoS rounded to 0..10, is its weight. Each set is a map index -> address plus the set
///      size in the group's packed word, with O(1) swap-remove; slots of removed members are
///      left dirty so re-adding writes nonzero -> nonzero. A directory packs (vram, total
///      weight) of 5 groups per word. A draw reads the directory (a task naming a GPU reads its
///      one group's lane), picks a group with probability weight / total, then reads that
///      group's word, picks a level with probability count x level / group weight and a
///      uniform member of that level's set. lock/release touch one set, the group word and
///      one directory word: O(1).
///      Limits: gas does not depend on the number of nodes; a draw over any GPU reads one word
///      per 5 hardware groups (groups are capped by maxGroups, default 32, at most 255), plus
///      ~450 gas of arithmetic per group; weights are QoS rounded to an integer (up to +-0.5 of
///      the QoS); at most 2^20 - 1 Available nodes per (group, level).
///      Model locality (weight x2 for holders of req.localModel) is drawn by rejection: a
///      non-holder is kept with probability 1/2, a holder always, which is exact for weights
///      w(1 + holds). Each try is accepted with probability >= 1/2, so we stop after
///      MAX_TRIES: the distribution is then off by at most 2^-MAX_TRIES, and lock/release never
///      touch per-model structures (a node may hold many models). A node whose client version
///      no longer meets the rule (governance raised it) is rejected the same way; if every try
///      meets such nodes the draw returns address(0) (the task waits in the market's queue).
///      Excluded nodes are taken out exactly: their weight is taken off their group in memory
///      and their index skipped in their set.
contract NodeRegistry is INodeRegistryFull, AccessControl {
    using SafeERC20 for IERC20;
    using NodeSelection for uint256;

    /// @dev One storage slot per node.
    struct Node {
        NodeStatus status;
        uint8 groupId;
        uint24 qos;
        uint24 taskCount;
        uint16 unsettled;
        uint24 pos;
        uint16 major;
        uint16 minor;
        uint16 patch;
        uint8 modelCount;
        uint96 stake;
    }

    /// @notice Draws tried by a selection before it settles for the last node drawn.
    uint256 public constant MAX_TRIES = 8;

    uint256 private constant _BPS = 10_000;

    /// @notice The CNX token staked.
    IERC20 public immutable token;

    /// @dev The hot slot, read by every market call: the market, the number of hardware groups
    ///      and copies of the parameters that lockRandom and release use (setParams keeps them
    ///      in step with _params), so the task path reads one slot for all of them.
    struct Hot {
        address market;
        uint8 numGroups;
        uint16 versionMajor;
        uint16 minMinor;
        uint16 minPatch;
        uint16 qosWindow;
        uint24 kickQos;
    }

    Hot private _hot;

    Params private _params;
    address private _treasury;
    address private _nodeMining;

    /// @dev Status counters, off the hot path: [0] ever joined, [2] online
    ///      (Available + Busy + PendingPause + PendingQuit), [3] PendingPause, [4] Paused,
    ///      [5] PendingQuit, [6] Quit. Available is summed from the groups; Busy derived.
    uint32[7] private _counts;

    mapping(address node => Node) private _nodes;
    /// @dev Group words, index = group id (1..255); see NodeSelection.
    uint256[256] private _groupWords;
    /// @dev (VRAM, total weight) of 5 groups per word; see NodeSelection.lane.
    uint256[52] private _directory;
    bytes32[256] private _groupGpu;
    mapping(bytes32 hwKey => uint8 groupId) private _groupIds;
    /// @dev Members of the (group, level) sets, key = NodeSelection.memberKey.
    mapping(uint256 key => address node) private _members;
    mapping(address node => mapping(uint256 index => bytes32 model)) private _modelAt;
    /// @dev Index + 1 of the model in the node's list, 0 when not held.
    mapping(address node => mapping(bytes32 model => uint256 indexPlusOne)) private _modelPos;
    /// @dev Block of the node's last join or resume (auditors must be online before a commit).
    mapping(address node => uint256 blockNumber) private _onlineSince;

    modifier onlyMarket() {
        if (msg.sender != _hot.market) revert NotMarket(msg.sender);
        _;
    }

    /// @param cnx The CNX token.
    /// @param admin Governance (DEFAULT_ADMIN_ROLE).
    /// @param treasury_ Receives half of every slash.
    constructor(IERC20 cnx, address admin, address treasury_) {
        if (address(cnx) == address(0) || admin == address(0) || treasury_ == address(0)) revert ZeroAddress();
        token = cnx;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _treasury = treasury_;
        Params memory p = Params({
            minStake: 400 ether,
            slashBps: 10_000,
            kickQos: uint24(4 * NodeSelection.QOS_ONE),
            minTasksForKick: 20,
            qosWindow: 50,
            versionMajor: 1,
            minMinor: 0,
            minPatch: 0,
            maxGroups: 32,
            maxModels: 64
        });
        _setParams(p);
        emit TreasuryChanged(address(0), treasury_);
    }

    // ============================================================== nodes

    /// @inheritdoc INodeRegistryFull
    function join(
        uint256 stake,
        string calldata gpuName,
        uint16 vram,
        uint16[3] calldata version,
        bytes32[] calldata models
    ) external {
        _join(stake, gpuName, vram, version, models);
    }

    /// @inheritdoc INodeRegistryFull
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
    ) external {
        // A front-runner may submit the same permit first; the allowance is then set anyway.
        try IERC20Permit(address(token)).permit(msg.sender, address(this), stake, deadline, v, r, s) {} catch {}
        _join(stake, gpuName, vram, version, models);
    }

    /// @inheritdoc INodeRegistryFull
    function updateModels(bytes32[] calldata add, bytes32[] calldata remove) external {
        Node storage n = _nodes[msg.sender];
        NodeStatus st = n.status;
        if (st == NodeStatus.None || st == NodeStatus.Quit) revert NodeNotActive(msg.sender, st);
        uint256 cnt = n.modelCount;
        for (uint256 i; i < remove.length; ++i) {
            bytes32 m = remove[i];
            uint256 p1 = _modelPos[msg.sender][m];
            if (p1 == 0) revert ModelNotHeld(m);
            bytes32 last = _modelAt[msg.sender][cnt - 1];
            if (p1 != cnt) {
                _modelAt[msg.sender][p1 - 1] = last;
                _modelPos[msg.sender][last] = p1;
            }
            delete _modelPos[msg.sender][m];
            --cnt;
        }
        cnt = _addModels(msg.sender, cnt, add, _params.maxModels);
        n.modelCount = uint8(cnt);
        emit ModelsUpdated(msg.sender, add, remove);
    }

    /// @inheritdoc INodeRegistryFull
    function updateVersion(uint16[3] calldata version) external {
        Node storage n = _nodes[msg.sender];
        NodeStatus st = n.status;
        if (st == NodeStatus.None || st == NodeStatus.Quit) revert NodeNotActive(msg.sender, st);
        _checkVersion(version[0], version[1], version[2], _params);
        (n.major, n.minor, n.patch) = (version[0], version[1], version[2]);
        emit VersionUpdated(msg.sender, version[0], version[1], version[2]);
    }

    /// @inheritdoc INodeRegistryFull
    function pause() external {
        Node storage n = _nodes[msg.sender];
        NodeStatus st = n.status;
        if (st == NodeStatus.Available) {
            _removeAvailable(n, false);
            n.status = NodeStatus.Paused;
            _counts[2] -= 1;
            _counts[4] += 1;
            emit NodeStatusChanged(msg.sender, NodeStatus.Paused);
            _setWeight(msg.sender, 0);
        } else if (st == NodeStatus.Busy) {
            n.status = NodeStatus.PendingPause;
            _counts[3] += 1;
            emit NodeStatusChanged(msg.sender, NodeStatus.PendingPause);
        } else {
            revert CannotPause(msg.sender, st);
        }
    }

    /// @inheritdoc INodeRegistryFull
    function resume() external {
        Node storage n = _nodes[msg.sender];
        NodeStatus st = n.status;
        if (st == NodeStatus.Paused) {
            _checkVersion(n.major, n.minor, n.patch, _params);
            n.status = NodeStatus.Available;
            _onlineSince[msg.sender] = block.number;
            _insertAvailable(msg.sender, n, false);
            _counts[2] += 1;
            _counts[4] -= 1;
            emit NodeStatusChanged(msg.sender, NodeStatus.Available);
            _setWeight(msg.sender, NodeSelection.levelOf(n.qos));
            _notifyMarket(msg.sender);
        } else if (st == NodeStatus.PendingPause) {
            n.status = NodeStatus.Busy;
            _counts[3] -= 1;
            emit NodeStatusChanged(msg.sender, NodeStatus.Busy);
        } else {
            revert CannotResume(msg.sender, st);
        }
    }

    /// @inheritdoc INodeRegistryFull
    function quit() external {
        Node storage n = _nodes[msg.sender];
        NodeStatus st = n.status;
        if (st == NodeStatus.Available || st == NodeStatus.Paused) {
            if (st == NodeStatus.Available) {
                _removeAvailable(n, false);
            } else {
                _counts[4] -= 1;
            }
            _toQuit(n, st == NodeStatus.Available);
            emit NodeStatusChanged(msg.sender, NodeStatus.Quit);
            if (n.unsettled == 0) _returnStake(msg.sender, n);
            if (st == NodeStatus.Available) _setWeight(msg.sender, 0);
        } else if (st == NodeStatus.Busy || st == NodeStatus.PendingPause) {
            if (st == NodeStatus.PendingPause) _counts[3] -= 1;
            n.status = NodeStatus.PendingQuit;
            _counts[5] += 1;
            emit NodeStatusChanged(msg.sender, NodeStatus.PendingQuit);
        } else {
            revert CannotQuit(msg.sender, st);
        }
    }

    // ============================================================== market

    /// @inheritdoc INodeRegistry
    /// @dev The seed comes from the market (block.prevrandao mixed with the task id): a block
    ///      producer can bias it (withhold a block, pick among its own validators' slots), so
    ///      selection is fair only against parties that do not control block production.
    function lockRandom(Requirement calldata req, uint256 seed, address excludeA, address excludeB)
        external
        onlyMarket
        returns (address node)
    {
        node = _select(req, seed, excludeA, excludeB, 0);
        if (node != address(0)) _lock(node, _nodes[node]);
    }

    /// @inheritdoc INodeRegistry
    function lockAuditor(
        Requirement calldata req,
        uint256 seed,
        address excludeA,
        address excludeB,
        uint256 onlineBefore
    ) external onlyMarket returns (address node) {
        node = _select(req, seed, excludeA, excludeB, onlineBefore);
        if (node != address(0)) _lock(node, _nodes[node]);
    }

    /// @inheritdoc INodeRegistry
    function groupNodes(bytes32 gpu, uint16 vram) external view returns (uint256) {
        uint256 gid = _groupIds[keccak256(abi.encode(gpu, vram))];
        return gid == 0 ? 0 : _groupWords[gid].nodes();
    }

    /// @inheritdoc INodeRegistry
    function onlineSince(address node) external view returns (uint256) {
        return _onlineSince[node];
    }

    /// @inheritdoc INodeRegistry
    function lock(address node) external onlyMarket {
        Node storage n = _nodes[node];
        if (n.status != NodeStatus.Available) revert NodeNotAvailable(node, n.status);
        _lock(node, n);
    }

    /// @inheritdoc INodeRegistry
    function release(address node, uint8 taskScore, bool settled) external onlyMarket returns (bool available) {
        if (taskScore > 10) revert InvalidTaskScore(taskScore);
        Node storage n = _nodes[node];
        NodeStatus st = n.status;
        if (st == NodeStatus.Quit) {
            // Slashed while it was running this task (the slash may already have closed it):
            // nothing else to do but return what is left of its stake once nothing is unsettled.
            if (settled && n.unsettled != 0) n.unsettled -= 1;
            emit NodeReleased(node, taskScore, n.qos, st);
            if (n.unsettled == 0) _returnStake(node, n);
            return false;
        }
        if (st != NodeStatus.Busy && st != NodeStatus.PendingPause && st != NodeStatus.PendingQuit) {
            revert NodeNotBusy(node, st);
        }
        if (settled) {
            if (n.unsettled == 0) revert NoUnsettledTask(node);
            n.unsettled -= 1;
        }
        uint256 oldQos = n.qos;
        uint256 qos;
        {
            // EMA with alpha = 1 / qosWindow, in fixed point (1e6 = 1.0); stays within [0, 10e6].
            uint256 window = _hot.qosWindow;
            qos = (oldQos * (window - 1) + uint256(taskScore) * NodeSelection.QOS_ONE) / window;
        }
        uint256 tasks = n.taskCount;
        if (tasks < type(uint24).max) ++tasks;
        n.qos = uint24(qos);
        n.taskCount = uint24(tasks);

        if (qos < _hot.kickQos && tasks >= _params.minTasksForKick) {
            if (st == NodeStatus.PendingPause) _counts[3] -= 1;
            else if (st == NodeStatus.PendingQuit) _counts[5] -= 1;
            _toQuit(n, true);
            emit NodeReleased(node, taskScore, qos, NodeStatus.Quit);
            emit NodeKickedOut(node, qos, tasks);
            if (n.unsettled == 0) _returnStake(node, n);
            _setWeight(node, 0);
            return false;
        }
        if (st == NodeStatus.Busy) {
            n.status = NodeStatus.Available;
            _insertAvailable(node, n, false);
            emit NodeReleased(node, taskScore, qos, NodeStatus.Available);
            uint256 level = NodeSelection.levelOf(qos);
            if (level != NodeSelection.levelOf(oldQos)) _setWeight(node, level);
            return true;
        }
        if (st == NodeStatus.PendingPause) {
            n.status = NodeStatus.Paused;
            _counts[2] -= 1;
            _counts[3] -= 1;
            _counts[4] += 1;
            emit NodeReleased(node, taskScore, qos, NodeStatus.Paused);
            _setWeight(node, 0);
            return false;
        }
        // PendingQuit
        _counts[5] -= 1;
        _toQuit(n, true);
        emit NodeReleased(node, taskScore, qos, NodeStatus.Quit);
        if (n.unsettled == 0) _returnStake(node, n);
        _setWeight(node, 0);
        return false;
    }

    /// @inheritdoc INodeRegistry
    function penalize(address node, uint256 amount) external onlyMarket returns (uint256 taken) {
        Node storage n = _nodes[node];
        uint256 stake = n.stake;
        taken = amount < stake ? amount : stake;
        if (taken == 0) return 0;
        n.stake = uint96(stake - taken);
        emit NodePenalized(node, taken);
        token.safeTransfer(msg.sender, taken);
    }

    /// @inheritdoc INodeRegistry
    function settle(address node) external onlyMarket {
        Node storage n = _nodes[node];
        uint256 u = n.unsettled;
        if (u == 0) revert NoUnsettledTask(node);
        n.unsettled = uint16(u - 1);
        emit NodeSettled(node, u - 1);
        if (u == 1 && n.status == NodeStatus.Quit) _returnStake(node, n);
    }

    /// @inheritdoc INodeRegistry
    function slash(address node) external onlyMarket returns (uint256 toAuditPool) {
        Node storage n = _nodes[node];
        uint256 u = n.unsettled;
        if (u == 0) revert NoUnsettledTask(node);
        n.unsettled = uint16(u - 1);
        uint256 stake = n.stake;
        uint256 amount = (stake * _params.slashBps) / _BPS;
        toAuditPool = amount / 2;
        uint256 toTreasury = amount - toAuditPool;
        n.stake = uint96(stake - amount);

        NodeStatus st = n.status;
        if (st != NodeStatus.Quit) {
            if (st == NodeStatus.Available) {
                _removeAvailable(n, false);
            } else if (st == NodeStatus.PendingPause) {
                _counts[3] -= 1;
            } else if (st == NodeStatus.PendingQuit) {
                _counts[5] -= 1;
            } else if (st == NodeStatus.Paused) {
                _counts[4] -= 1;
            }
            _toQuit(n, st != NodeStatus.Paused);
            emit NodeStatusChanged(node, NodeStatus.Quit);
        }
        emit NodeSlashed(node, amount, toAuditPool, toTreasury);
        // Nothing left open to audit (the task it runs, if any, counts as open): the rest of
        // the stake, if any, goes back now.
        if (u == 1) _returnStake(node, n);
        if (toAuditPool != 0) token.safeTransfer(msg.sender, toAuditPool);
        if (toTreasury != 0) token.safeTransfer(_treasury, toTreasury);
        if (st != NodeStatus.Quit && st != NodeStatus.Paused) _setWeight(node, 0);
    }

    // ============================================================== views

    /// @inheritdoc INodeRegistryFull
    function previewSelect(Requirement calldata req, uint256 seed, address excludeA, address excludeB)
        external
        view
        returns (address node)
    {
        return _select(req, seed, excludeA, excludeB, 0);
    }

    /// @inheritdoc INodeRegistry
    function isEligible(address node, Requirement calldata req) external view returns (bool) {
        Node storage n = _nodes[node];
        if (n.status != NodeStatus.Available) return false;
        if (!_versionOk(n.major, n.minor, n.patch, _params)) return false;
        uint256 gid = n.groupId;
        uint16 vram = _groupWords[gid].vram();
        if (req.gpu != 0) return req.gpu == _groupGpu[gid] && vram == req.minVram;
        return vram >= req.minVram;
    }

    /// @inheritdoc INodeRegistry
    function hardware(address node) external view returns (bytes32 gpu, uint16 vram) {
        uint256 gid = _nodes[node].groupId;
        if (gid == 0) return (bytes32(0), 0);
        return (_groupGpu[gid], _groupWords[gid].vram());
    }

    /// @inheritdoc INodeRegistryFull
    function nodeInfo(address node) external view returns (NodeInfo memory info) {
        Node memory n = _nodes[node];
        info.status = n.status;
        info.stake = n.stake;
        info.qos = n.qos;
        info.weight = _weight(n);
        if (n.groupId != 0) {
            info.gpu = _groupGpu[n.groupId];
            info.vram = _groupWords[n.groupId].vram();
        }
        (info.major, info.minor, info.patch) = (n.major, n.minor, n.patch);
        info.taskCount = n.taskCount;
        info.unsettled = n.unsettled;
        info.models = new bytes32[](n.modelCount);
        for (uint256 i; i < n.modelCount; ++i) {
            info.models[i] = _modelAt[node][i];
        }
    }

    /// @inheritdoc INodeRegistryFull
    function statusOf(address node) external view returns (NodeStatus) {
        return _nodes[node].status;
    }

    /// @inheritdoc INodeRegistryFull
    function qosOf(address node) external view returns (uint256) {
        return _nodes[node].qos;
    }

    /// @inheritdoc INodeRegistryFull
    function weightOf(address node) external view returns (uint256) {
        return _weight(_nodes[node]);
    }

    /// @inheritdoc INodeRegistryFull
    function hasModel(address node, bytes32 model) external view returns (bool) {
        return _modelPos[node][model] != 0;
    }

    /// @inheritdoc INodeRegistryFull
    function countsByStatus() external view returns (uint256[7] memory c) {
        uint256 available = 0;
        uint256 groups = _hot.numGroups;
        for (uint256 g = 1; g <= groups; ++g) {
            available += _groupWords[g].available();
        }
        c[0] = _counts[0];
        c[1] = available;
        c[2] = _counts[2] - available - _counts[3] - _counts[5];
        c[3] = _counts[3];
        c[4] = _counts[4];
        c[5] = _counts[5];
        c[6] = _counts[6];
    }

    /// @inheritdoc INodeRegistryFull
    function totalNodes() external view returns (uint256) {
        return _counts[0];
    }

    /// @inheritdoc INodeRegistryFull
    function hardwareGroups()
        external
        view
        returns (bytes32[] memory gpus, uint16[] memory vrams, uint256[] memory nodes, uint256[] memory available)
    {
        uint256 groups = _hot.numGroups;
        gpus = new bytes32[](groups);
        vrams = new uint16[](groups);
        nodes = new uint256[](groups);
        available = new uint256[](groups);
        for (uint256 g = 1; g <= groups; ++g) {
            uint256 w = _groupWords[g];
            gpus[g - 1] = _groupGpu[g];
            vrams[g - 1] = w.vram();
            nodes[g - 1] = w.nodes();
            available[g - 1] = w.available();
        }
    }

    /// @inheritdoc INodeRegistryFull
    function params() external view returns (Params memory) {
        return _params;
    }

    /// @notice The task market (the only caller of the market functions).
    function market() external view returns (address) {
        return _hot.market;
    }

    /// @notice The node-mining hook (0 = off).
    function nodeMining() external view returns (address) {
        return _nodeMining;
    }

    /// @notice The treasury (receives half of every slash).
    function treasury() external view returns (address) {
        return _treasury;
    }

    // ============================================================== governance

    /// @inheritdoc INodeRegistryFull
    function setParams(Params calldata p) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (p.minStake == 0) revert InvalidMinStake(p.minStake);
        if (p.slashBps > _BPS) revert InvalidSlashBps(p.slashBps);
        if (p.qosWindow == 0) revert InvalidQosWindow(p.qosWindow);
        if (p.kickQos > NodeSelection.MAX_QOS) revert InvalidKickQos(p.kickQos);
        if (p.maxGroups < _hot.numGroups) revert InvalidMaxGroups(p.maxGroups, _hot.numGroups);
        _setParams(p);
    }

    /// @inheritdoc INodeRegistryFull
    function setMarket(address newMarket) external onlyRole(DEFAULT_ADMIN_ROLE) {
        emit MarketChanged(_hot.market, newMarket);
        _hot.market = newMarket;
    }

    /// @inheritdoc INodeRegistryFull
    function setNodeMining(address newNodeMining) external onlyRole(DEFAULT_ADMIN_ROLE) {
        emit NodeMiningChanged(_nodeMining, newNodeMining);
        _nodeMining = newNodeMining;
    }

    /// @inheritdoc INodeRegistryFull
    function setTreasury(address newTreasury) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newTreasury == address(0)) revert ZeroAddress();
        emit TreasuryChanged(_treasury, newTreasury);
        _treasury = newTreasury;
    }

    // ============================================================== internals

    function _setParams(Params memory p) private {
        _params = p;
        Hot storage hot = _hot;
        (hot.versionMajor, hot.minMinor, hot.minPatch) = (p.versionMajor, p.minMinor, p.minPatch);
        (hot.qosWindow, hot.kickQos) = (p.qosWindow, p.kickQos);
        emit ParamsChanged(p);
    }

    function _join(
        uint256 stake,
        string calldata gpuName,
        uint16 vram,
        uint16[3] calldata version,
        bytes32[] calldata models
    ) private {
        Node storage n = _nodes[msg.sender];
        NodeStatus st = n.status;
        if (st != NodeStatus.None && st != NodeStatus.Quit) revert AlreadyJoined(msg.sender, st);
        if (n.unsettled != 0) revert UnsettledTasks(msg.sender, n.unsettled);
        {
            Params memory p = _params;
            if (stake < p.minStake) revert StakeTooLow(stake, p.minStake);
            if (stake > type(uint96).max) revert StakeTooHigh(stake, type(uint96).max);
            if (bytes(gpuName).length == 0) revert EmptyGpuName();
            if (vram == 0) revert InvalidVram(vram);
            _checkVersion(version[0], version[1], version[2], p);
            n.groupId = uint8(_groupFor(keccak256(bytes(gpuName)), vram, gpuName, p.maxGroups));
            n.modelCount = uint8(_replaceModels(n.modelCount, models, p.maxModels));
        }
        n.status = NodeStatus.Available;
        // QoS follows the address: only a first join starts at 10; a node that quit or was
        // kicked out comes back with the QoS and task count it left with.
        if (st == NodeStatus.None) n.qos = uint24(NodeSelection.MAX_QOS);
        _onlineSince[msg.sender] = block.number;
        (n.major, n.minor, n.patch) = (version[0], version[1], version[2]);
        n.stake = uint96(stake);
        _insertAvailable(msg.sender, n, true);
        if (st == NodeStatus.None) _counts[0] += 1;
        else _counts[6] -= 1;
        _counts[2] += 1;

        emit NodeJoined(msg.sender, stake, keccak256(bytes(gpuName)), gpuName, vram, version, models);
        token.safeTransferFrom(msg.sender, address(this), stake);
        _setWeight(msg.sender, NodeSelection.MAX_LEVEL);
        _notifyMarket(msg.sender);
    }

    /// @dev A (re)join replaces the old model list; returns the new count.
    function _replaceModels(uint256 oldCount, bytes32[] calldata models, uint256 maxModels)
        private
        returns (uint256)
    {
        for (uint256 i; i < oldCount; ++i) {
            delete _modelPos[msg.sender][_modelAt[msg.sender][i]];
        }
        return _addModels(msg.sender, 0, models, maxModels);
    }

    function _addModels(address node, uint256 cnt, bytes32[] calldata add, uint256 maxModels)
        private
        returns (uint256)
    {
        if (cnt + add.length > maxModels) revert TooManyModels(cnt + add.length, maxModels);
        for (uint256 i; i < add.length; ++i) {
            bytes32 m = add[i];
            if (m == 0) revert ZeroModel();
            if (_modelPos[node][m] != 0) revert DuplicateModel(m);
            _modelAt[node][cnt] = m;
            _modelPos[node][m] = ++cnt;
        }
        return cnt;
    }

    function _groupFor(bytes32 gpu, uint16 vram, string calldata gpuName, uint256 maxGroups)
        private
        returns (uint256 gid)
    {
        bytes32 key = keccak256(abi.encode(gpu, vram));
        gid = _groupIds[key];
        if (gid == 0) {
            gid = uint256(_hot.numGroups) + 1;
            if (gid > maxGroups) {
                gid = _emptyGroup(gid - 1);
                if (gid == 0) revert TooManyHardwareGroups(maxGroups);
            } else {
                _hot.numGroups = uint8(gid);
            }
            _groupIds[key] = uint8(gid);
            _groupGpu[gid] = gpu;
            _groupWords[gid] = NodeSelection.newWord(vram);
            (uint256 slot, uint256 shift) = NodeSelection.lane(gid);
            _directory[slot] = (_directory[slot] & ~(uint256(0xffff) << shift)) | (uint256(vram) << shift);
            emit HardwareGroupCreated(gid, gpu, gpuName, vram);
        }
    }

    /// @dev A group without registered nodes (all quit), freed for a new (gpu, vram): 0 if none.
    ///      Joining under new names and quitting cannot exhaust the groups. O(groups), only on
    ///      the join that finds every group in use.
    function _emptyGroup(uint256 groups) private returns (uint256) {
        for (uint256 g = 1; g <= groups; ++g) {
            uint256 w = _groupWords[g];
            if (w.nodes() != 0) continue;
            delete _groupIds[keccak256(abi.encode(_groupGpu[g], w.vram()))];
            return g;
        }
        return 0;
    }

    /// @dev Adds an Available node at the end of its (group, level) set.
    function _insertAvailable(address node, Node storage n, bool newMember) private {
        uint256 gid = n.groupId;
        uint256 level = NodeSelection.levelOf(n.qos);
        uint256 word = _groupWords[gid];
        uint256 idx = word.count(level);
        if (idx == NodeSelection.COUNT_MASK) revert GroupLevelFull(gid, level);
        _members[NodeSelection.memberKey(gid, level, idx)] = node;
        n.pos = uint24(idx);
        word = word.bump(level, true);
        if (newMember) word = word.bumpNodes(true);
        _groupWords[gid] = word;
        if (level != 0) {
            (uint256 slot, uint256 shift) = NodeSelection.lane(gid);
            _directory[slot] = _directory[slot].laneBump(shift, level, true);
        }
    }

    /// @dev Swap-removes an Available node from its (group, level) set. The vacated last slot
    ///      keeps its stale address (never zeroed) so the next insert is a cheap rewrite.
    function _removeAvailable(Node storage n, bool leaving) private {
        uint256 gid = n.groupId;
        uint256 level = NodeSelection.levelOf(n.qos);
        uint256 word = _groupWords[gid];
        uint256 last = word.count(level) - 1;
        uint256 idx = n.pos;
        if (idx != last) {
            address moved = _members[NodeSelection.memberKey(gid, level, last)];
            _members[NodeSelection.memberKey(gid, level, idx)] = moved;
            _nodes[moved].pos = uint24(idx);
        }
        word = word.bump(level, false);
        if (leaving) word = word.bumpNodes(false);
        _groupWords[gid] = word;
        if (level != 0) {
            (uint256 slot, uint256 shift) = NodeSelection.lane(gid);
            _directory[slot] = _directory[slot].laneBump(shift, level, false);
        }
    }

    function _decGroupNodes(uint256 gid) private {
        _groupWords[gid] = _groupWords[gid].bumpNodes(false);
    }

    function _lock(address node, Node storage n) private {
        _removeAvailable(n, false);
        n.status = NodeStatus.Busy;
        n.unsettled += 1;
        emit NodeStatusChanged(node, NodeStatus.Busy);
    }

    /// @dev A node already out of its Available set leaves for Quit: off its group and, when
    ///      it was `online`, off the online count (callers fix the pending/paused counters and
    ///      then set its mining weight to 0, last, after every state change).
    function _toQuit(Node storage n, bool online) private {
        n.status = NodeStatus.Quit;
        _decGroupNodes(n.groupId);
        if (online) _counts[2] -= 1;
        _counts[6] += 1;
    }

    function _returnStake(address node, Node storage n) private {
        uint256 amount = n.stake;
        if (amount == 0) return;
        n.stake = 0;
        emit StakeReturned(node, amount);
        token.safeTransfer(node, amount);
    }

    function _setWeight(address node, uint256 weight) private {
        address mining = _nodeMining;
        if (mining != address(0)) INodeMining(mining).updateWeight(node, weight);
    }

    function _notifyMarket(address node) private {
        address m = _hot.market;
        if (m.code.length != 0) INodeAvailableHook(m).onNodeAvailable(node);
    }

    function _weight(Node memory n) private pure returns (uint256) {
        NodeStatus st = n.status;
        if (st == NodeStatus.None || st == NodeStatus.Paused || st == NodeStatus.Quit) return 0;
        return NodeSelection.levelOf(n.qos);
    }

    function _versionOk(uint16 major, uint16 minor, uint16 patch, Params memory p) private pure returns (bool) {
        return major == p.versionMajor && (minor > p.minMinor || (minor == p.minMinor && patch >= p.minPatch));
    }

    function _checkVersion(uint16 major, uint16 minor, uint16 patch, Params memory p) private pure {
        if (!_versionOk(major, minor, patch, p)) {
            revert VersionNotAllowed(major, minor, patch, p.versionMajor, p.minMinor, p.minPatch);
        }
    }

    /// @dev The candidate groups of one draw, in memory. A skip is an excluded Available node
    ///      in a candidate group: (groupId << 64 | level << 32 | pos) + 1, or 0.
    struct Draw {
        uint256[] gids;
        uint256[] weights;
        uint256 n;
        uint256 total;
        uint256 skipA;
        uint256 skipB;
    }

    /// @dev The weighted draw described at the top of the contract.
    function _select(
        Requirement calldata req,
        uint256 seed,
        address excludeA,
        address excludeB,
        uint256 onlineBefore
    ) private view returns (address) {
        Draw memory d = Draw({gids: new uint256[](0), weights: new uint256[](0), n: 0, total: 0, skipA: 0, skipB: 0});
        if (req.gpu != 0) {
            uint256 gid = _groupIds[keccak256(abi.encode(req.gpu, req.minVram))];
            if (gid == 0) return address(0);
            (uint256 slot, uint256 shift) = NodeSelection.lane(gid);
            d.gids = new uint256[](1);
            d.weights = new uint256[](1);
            d.gids[0] = gid;
            d.weights[0] = _directory[slot].laneWeight(shift);
            d.n = 1;
        } else {
            uint256 groups = _hot.numGroups;
            d.gids = new uint256[](groups);
            d.weights = new uint256[](groups);
            d.n = _scan(d.gids, d.weights, groups, req.minVram);
        }

        // Exclusions: take each excluded Available node's weight off its group (in memory) and
        // remember where it sits so that the draw skips it.
        if (excludeA != address(0)) d.skipA = _exclude(excludeA, d);
        if (excludeB != address(0) && excludeB != excludeA) d.skipB = _exclude(excludeB, d);
        if (d.skipA != 0 && d.skipB != 0 && _skipPos(d.skipB) < _skipPos(d.skipA)) {
            (d.skipA, d.skipB) = (d.skipB, d.skipA);
        }

        uint256 total = 0;
        for (uint256 i; i < d.n; ++i) {
            total += d.weights[i];
        }
        if (total == 0) return address(0);
        d.total = total;
        return _draw(d, seed, req.localModel, onlineBefore);
    }

    /// @dev Reads the directory: every group with weight and enough VRAM is a candidate.
    function _scan(uint256[] memory gids, uint256[] memory weights, uint256 groups, uint256 minVram)
        private
        view
        returns (uint256 n)
    {
        uint256 slots = (groups + NodeSelection.LANES - 1) / NodeSelection.LANES;
        for (uint256 slot; slot < slots; ++slot) {
            uint256 dir = _directory[slot];
            unchecked {
                uint256 gid = slot * NodeSelection.LANES;
                uint256 end = gid + NodeSelection.LANES;
                if (end > groups) end = groups;
                // Lanes are 48 bits: [vram 16 | weight 32]; shift the word down lane by lane.
                for (++gid; gid <= end; ++gid) {
                    uint256 w = (dir >> 16) & 0xffffffff;
                    if (w != 0 && (dir & 0xffff) >= minVram) {
                        assembly ("memory-safe") {
                            let off := mul(add(n, 1), 0x20)
                            mstore(add(gids, off), gid)
                            mstore(add(weights, off), w)
                        }
                        ++n;
                    }
                    dir >>= NodeSelection.LANE_BITS;
                }
            }
        }
    }

    /// @dev Candidates online since `onlineBefore` or later (0: no such rule) are rejected like
    ///      those of a disallowed version.
    function _draw(Draw memory d, uint256 seed, bytes32 model, uint256 onlineBefore)
        private
        view
        returns (address chosen)
    {
        Hot storage hot = _hot;
        // The version rule packed as major << 32 | minor << 16 | patch.
        uint256 rule = (uint256(hot.versionMajor) << 32) | (uint256(hot.minMinor) << 16) | hot.minPatch;
        for (uint256 t; t < MAX_TRIES; ++t) {
            uint256 r = uint256(keccak256(abi.encode(seed, t)));
            address cand = _pick(d, uint128(r) % d.total);
            Node storage c = _nodes[cand];
            uint256 v = (uint256(c.major) << 32) | (uint256(c.minor) << 16) | c.patch;
            if ((v >> 32) != (rule >> 32) || (v & 0xffffffff) < (rule & 0xffffffff)) continue;
            if (onlineBefore != 0 && _onlineSince[cand] >= onlineBefore) continue;
            chosen = cand;
            // Locality by rejection: a holder is always kept, a non-holder on a fair coin.
            if (model == 0 || (r >> 128) & 1 == 0 || _modelPos[cand][model] != 0) return cand;
        }
    }

    /// @dev The member that point `x` in [0, d.total) falls on.
    function _pick(Draw memory d, uint256 x) private view returns (address) {
        uint256 ci = 0;
        uint256[] memory weights = d.weights;
        unchecked {
            for (uint256 n = d.n; ci < n; ++ci) {
                uint256 w = weights[ci];
                if (x < w) break;
                x -= w;
            }
        }
        uint256 gid = d.gids[ci];
        uint256 word = _unskip(_unskip(_groupWords[gid], d.skipA, gid), d.skipB, gid);
        (uint256 level, uint256 idx) = NodeSelection.locateLevel(word, x);
        idx = _applySkip(_applySkip(idx, d.skipA, gid, level), d.skipB, gid, level);
        return _members[NodeSelection.memberKey(gid, level, idx)];
    }

    function _exclude(address ex, Draw memory d) private view returns (uint256 skip) {
        Node storage e = _nodes[ex];
        if (e.status != NodeStatus.Available) return 0;
        uint256 gid = e.groupId;
        for (uint256 i; i < d.n; ++i) {
            if (d.gids[i] == gid) {
                uint256 level = NodeSelection.levelOf(e.qos);
                d.weights[i] -= level;
                return ((gid << 64) | (level << 32) | uint256(e.pos)) + 1;
            }
        }
        return 0;
    }

    /// @dev The group word without the excluded node `skip` if it belongs to group `gid`.
    function _unskip(uint256 word, uint256 skip, uint256 gid) private pure returns (uint256) {
        if (skip == 0 || ((skip - 1) >> 64) != gid) return word;
        return word.bump(((skip - 1) >> 32) & type(uint32).max, false);
    }

    function _skipPos(uint256 skip) private pure returns (uint256) {
        return (skip - 1) & type(uint32).max;
    }

    /// @dev Maps an index among the set's non-excluded members to the real index.
    function _applySkip(uint256 idx, uint256 skip, uint256 gid, uint256 level) private pure returns (uint256) {
        if (skip == 0) return idx;
        uint256 s = skip - 1;
        if ((s >> 64) == gid && ((s >> 32) & type(uint32).max) == level && idx >= (s & type(uint32).max)) {
            return idx + 1;
        }
        return idx;
    }
}
