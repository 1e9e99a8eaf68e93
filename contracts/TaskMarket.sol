// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {LibBit} from "solady/utils/LibBit.sol";

import {ITaskMarket} from "./interfaces/ITaskMarket.sol";
import {INodeRegistry, INodeAvailableHook} from "./interfaces/INodeRegistry.sol";
import {TaskQueue} from "./libraries/TaskQueue.sol";
import {MarketBase} from "./libraries/MarketBase.sol";
import {MarketAudits, IMarketAudits} from "./libraries/MarketAudits.sol";

/// @title The task market
/// @notice See ITaskMarket. Nodes are paid through an internal balance (withdraw()); creators
///         are refunded by direct transfer. The audit of drawn tasks runs in MarketAudits,
///         deployed by the constructor and called by DELEGATECALL over this contract's storage
///         (see MarketBase); creation, the queue, the undrawn path and the views stay here.
/// @dev Randomness (docs/security.md has the threat model and the numbers): the audit draw and
///      the auditors use the hash of the executor's commit block, which did not exist when the
///      executor chose its score and which no later caller can re-roll; auditors must have been
///      online before that block. `block.prevrandao` seeds the executor's selection, which a
///      creator can predict: steering a task to one's own node is made worthless instead (task
///      mining counts only broad tasks of others, audits are drawn afterwards). A block producer
///      can still withhold a commit block whose hash draws an audit (one try per block it makes).
contract TaskMarket is MarketBase, ITaskMarket, INodeAvailableHook {
    using SafeERC20 for IERC20;
    using TaskQueue for TaskQueue.Queue;

    /// @notice The audit module (runs by DELEGATECALL in this contract's storage).
    address public immutable auditModule;

    /// @param token_ The CNX token.
    /// @param registry_ The node registry (which must be told this market with its setMarket).
    /// @param admin Receives DEFAULT_ADMIN_ROLE (parameters, relay role, emission hook).
    constructor(IERC20 token_, INodeRegistry registry_, address admin) MarketBase(token_, registry_) {
        if (admin == address(0)) revert ZeroAddress();
        auditModule = address(new MarketAudits(token_, registry_));
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _setParams(
            Params({
                nonGenerationTime: 30,
                secondsPerImage: 20,
                textGenerationTime: 10,
                maxQueueSize: 1000,
                minTimeout: 180,
                timeoutFactor: 3,
                auditRateBps: 500,
                auditLevyBps: 1000,
                hammingThreshold: 5,
                auditWindow: 30 minutes,
                discloseWindow: 15 minutes,
                maxQueueClasses: 16,
                auditScan: 8,
                queueTimeout: 1 days
            })
        );
        _setTimeoutBounty(1 ether);
    }

    // ================================================================== application

    /// @inheritdoc ITaskMarket
    function createTask(TaskRequest calldata req) external nonReentrant returns (uint256) {
        return _create(req);
    }

    /// @inheritdoc ITaskMarket
    function createTaskWithPermit(TaskRequest calldata req, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        nonReentrant
        returns (uint256)
    {
        _validate(req);
        uint256 escrow = req.alwaysAudit ? req.fee * 3 : req.fee;
        // A permit front-run by someone else still leaves the allowance: ignore its failure.
        try IERC20Permit(address(token)).permit(msg.sender, address(this), escrow, deadline, v, r, s) {} catch {}
        return _create(req);
    }

    /// @inheritdoc ITaskMarket
    function cancel(uint256 taskId) external nonReentrant {
        Task storage t = _tasks[taskId];
        if (t.status != TaskStatus.Queued) revert WrongStatus(taskId, t.status);
        if (t.creator != msg.sender) revert NotCreator(taskId, msg.sender);
        _dequeue(taskId);
        t.status = TaskStatus.Cancelled;
        emit TaskCancelled(taskId);
        _refund(taskId, t.creator, _escrowOf(t));
    }

    // ================================================================== nodes and relay

    /// @inheritdoc ITaskMarket
    function commit(uint256 taskId, bytes32 commitment) external nonReentrant {
        if (commitment == 0) revert ZeroCommitment(taskId);
        Task storage t = _tasks[taskId];
        TaskStatus status = t.status;
        if (status == TaskStatus.Started && msg.sender == t.executor) {
            (uint256 time, uint256 timeoutSecs) = _timing(t);
            uint256 start = t.startTime;
            uint256 deadline = start + timeoutSecs;
            if (block.timestamp > deadline) revert DeadlinePassed(taskId, deadline);
            _execCommitment[taskId] = commitment;
            t.commitBlock = uint32(block.number);
            t.status = TaskStatus.Committed;
            if (block.timestamp > start + time) t.info |= _LATE;
            emit TaskCommitted(taskId, msg.sender, commitment);
        } else if (status == TaskStatus.Auditing) {
            _delegate(abi.encodeCall(IMarketAudits.commitAudit, (taskId, commitment)));
        } else {
            revert NotAssigned(taskId, msg.sender);
        }
    }

    /// @inheritdoc ITaskMarket
    function attestDelivery(uint256 taskId) external nonReentrant onlyRole(RELAY_ROLE) {
        Task storage t = _tasks[taskId];
        TaskStatus status = t.status;
        if (status == TaskStatus.Auditing || status == TaskStatus.Disclosing) {
            _delegate(abi.encodeCall(IMarketAudits.attestAudited, (taskId)));
            return;
        }
        if (status != TaskStatus.Committed) revert WrongStatus(taskId, status);
        (, uint256 timeoutSecs) = _timing(t);
        uint256 deadline = t.startTime + timeoutSecs;
        if (block.timestamp > deadline) revert DeadlinePassed(taskId, deadline);
        emit TaskDelivered(taskId);
        uint8 score = t.info & _LATE != 0 ? _SCORE_LATE : _SCORE_ON_TIME;
        if (_resolve(taskId, t)) {
            _delegate(abi.encodeCall(IMarketAudits.startAudit, (taskId, _DELIVERED | _EXEC_DONE, score)));
            return;
        }
        address executor = t.executor;
        t.status = TaskStatus.Success;
        _payExecutor(taskId, t, executor, t.fee);
        emit TaskSettled(taskId, Outcome.Success);
        _release(executor, score, true);
        _recordSuccess(taskId, t, executor);
    }

    /// @inheritdoc ITaskMarket
    function resolveDraw(uint256 taskId) external nonReentrant {
        Task storage t = _tasks[taskId];
        if (t.status != TaskStatus.Committed) revert WrongStatus(taskId, t.status);
        if (t.info & _RESOLVED_CLEAR != 0) revert DrawAlreadyResolved(taskId);
        if (_resolve(taskId, t)) _delegate(abi.encodeCall(IMarketAudits.startAudit, (taskId, 0, 0)));
    }

    /// @inheritdoc ITaskMarket
    function disclose(uint256 taskId, bytes calldata score, bytes32 salt) external nonReentrant {
        _delegate(abi.encodeCall(IMarketAudits.disclose, (taskId, score, salt)));
    }

    /// @inheritdoc ITaskMarket
    function timeout(uint256 taskId) external nonReentrant {
        Task storage t = _tasks[taskId];
        TaskStatus status = t.status;
        if (status == TaskStatus.Auditing || status == TaskStatus.Disclosing) {
            _delegate(abi.encodeCall(IMarketAudits.timeoutAudit, (taskId)));
            return;
        }
        if (status == TaskStatus.Queued) {
            if (block.timestamp <= uint256(t.startTime) + _paramsAt[t.pv].queueTimeout) revert NothingDue(taskId);
            _dequeue(taskId);
            t.status = TaskStatus.Expired;
            emit TaskExpired(taskId);
            _refund(taskId, t.creator, _escrowOf(t));
            return;
        }
        if (status != TaskStatus.Started && status != TaskStatus.Committed) revert NothingDue(taskId);
        (, uint256 timeoutSecs) = _timing(t);
        if (block.timestamp <= t.startTime + timeoutSecs) revert NothingDue(taskId);
        address executor = t.executor;
        emit TaskTimedOut(taskId, executor);
        if (status == TaskStatus.Committed && _resolve(taskId, t)) {
            // Committed, not delivered, drawn: the audit still judges it.
            _delegate(abi.encodeCall(IMarketAudits.startAudit, (taskId, _EXEC_DONE, 0)));
            return;
        }
        if (status == TaskStatus.Started) {
            // Nobody else is paid to end a task whose executor never committed; a node that
            // starts a task and sits on it (Busy, mining) pays whoever ends it.
            uint256 bounty = registry.penalize(executor, _timeoutBounty);
            if (bounty != 0) {
                _balances[msg.sender] += bounty;
                emit TimeoutBountyPaid(taskId, msg.sender, bounty);
            }
        } else {
            // Withholding an undrawn result must not save the levy (docs/security.md, 1d): the
            // levy comes out of the executor's stake.
            uint256 taken = registry.penalize(executor, uint256(t.fee) * _paramsAt[t.pv].auditLevyBps / _BPS);
            if (taken != 0) {
                _pool.balance += uint96(taken);
                emit ExecutorPenalized(taskId, executor, taken);
            }
        }
        _finish(taskId, t, status == TaskStatus.Started ? Outcome.NotCommitted : Outcome.NotDelivered, _escrowOf(t));
        _release(executor, 0, true);
    }

    /// @inheritdoc ITaskMarket
    function withdraw() external nonReentrant {
        uint256 amount = _balances[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        _balances[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Registry callback: `node` became Available through a registry call (join,
    ///         resume); it takes a pending audit or the best queued task it is eligible for.
    ///         Ignored while a market call is in progress (the market then handles the node itself).
    /// @param node The node.
    function onNodeAvailable(address node) external {
        if (msg.sender != address(registry)) revert NotRegistry(msg.sender);
        if (_reentrancyGuardEntered()) return;
        _assignWork(node);
    }

    // ================================================================== governance

    /// @inheritdoc ITaskMarket
    function setParams(Params calldata newParams) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setParams(newParams);
    }

    /// @inheritdoc ITaskMarket
    function setTimeoutBounty(uint256 bounty) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTimeoutBounty(bounty);
    }

    /// @inheritdoc ITaskMarket
    function setEmission(address taskMining_, uint256 minMiningFee_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pool.taskMining = taskMining_;
        _minMiningFee = minMiningFee_;
        emit EmissionChanged(taskMining_, minMiningFee_);
    }

    // ================================================================== views

    /// @inheritdoc ITaskMarket
    function getTask(uint256 taskId) external view returns (TaskInfo memory info) {
        Task storage t = _tasks[taskId];
        uint8 bits = t.info;
        Params storage p = _paramsAt[t.pv];
        (uint256 time, uint256 timeoutSecs) = _timingWith(p, bits);
        info.creator = t.creator;
        info.taskType = bits & _IMAGES_MASK == 0 ? TaskType.Text : TaskType.Image;
        info.status = t.status;
        info.argsHash = t.argsHash;
        info.fee = t.fee;
        info.value = t.status == TaskStatus.None ? 0 : uint256(t.fee) / time;
        info.numImages = bits & _IMAGES_MASK;
        info.minVram = t.minVram;
        info.requiredGpu = _taskGpu[taskId];
        info.alwaysAudit = bits & _ALWAYS_AUDIT != 0;
        info.executor = t.executor;
        info.commitBlock = t.commitBlock;
        if (t.executor != address(0)) info.startTime = t.startTime; // while queued it holds the queue time
        if (info.startTime != 0) info.deadline = info.startTime + timeoutSecs;
        Audit storage a = _audits[taskId];
        info.drawn = a.drawTime != 0;
        info.drawResolved = info.drawn || bits & _RESOLVED_CLEAR != 0 || t.status == TaskStatus.Success;
        info.delivered = a.flags & _DELIVERED != 0 || (!info.drawn && t.status == TaskStatus.Success);
        if (info.drawn) {
            info.auditSearchDeadline = uint256(a.drawTime) + p.auditWindow;
            if (a.discloseStart != 0) info.discloseDeadline = uint256(a.discloseStart) + p.discloseWindow;
            for (uint256 i = 0; i < 2; ++i) {
                info.auditors[i] = a.auditors[i].node;
                if (a.auditors[i].node != address(0)) {
                    info.auditorDeadlines[i] = uint256(a.auditors[i].startTime) + timeoutSecs;
                }
            }
        }
    }

    /// @inheritdoc ITaskMarket
    function commitmentOf(uint256 taskId, address node) external view returns (bytes32 commitment) {
        Task storage t = _tasks[taskId];
        (, commitment) = _partyOf(taskId, t, _audits[taskId], node);
    }

    /// @inheritdoc ITaskMarket
    function currentTask(address node) external view returns (uint256) {
        uint256 taskId = _current[node];
        if (taskId == 0) return 0;
        Task storage t = _tasks[taskId];
        TaskStatus s = t.status;
        if (t.executor == node) {
            if (s == TaskStatus.Started || s == TaskStatus.Committed) return taskId;
            if ((s == TaskStatus.Auditing || s == TaskStatus.Disclosing) && _audits[taskId].flags & _EXEC_DONE == 0) {
                return taskId;
            }
            return 0;
        }
        if (s != TaskStatus.Auditing) return 0;
        Audit storage a = _audits[taskId];
        for (uint256 i = 0; i < 2; ++i) {
            Auditor storage au = a.auditors[i];
            if (au.node == node && !au.committed && !_isSlashed(a, i + 1)) return taskId;
        }
        return 0;
    }

    /// @inheritdoc ITaskMarket
    function estimatedTime(TaskType taskType, uint8 numImages) public view returns (uint256 time) {
        // numImages of a text task is ignored; an image task's is kept whole (not masked).
        if (taskType == TaskType.Text) (time,) = _timingWith(_params, 0);
        else time = uint256(_params.nonGenerationTime) + uint256(numImages) * _params.secondsPerImage;
    }

    /// @inheritdoc ITaskMarket
    function taskValue(uint256 fee, TaskType taskType, uint8 numImages) external view returns (uint256) {
        return fee / estimatedTime(taskType, numImages);
    }

    /// @inheritdoc ITaskMarket
    function queueSize() external view returns (uint256) {
        return _counters.queueSize;
    }

    /// @inheritdoc ITaskMarket
    function queuePosition(uint256 value) external view returns (uint256 ahead) {
        uint256 bucket = TaskQueue.bucketOf(value);
        uint256 mask = _counters.activeClasses;
        while (mask != 0) {
            uint256 c = LibBit.ffs(mask);
            mask &= mask - 1;
            ahead += _queue.countFrom(c, bucket);
        }
    }

    /// @inheritdoc ITaskMarket
    function params() external view returns (Params memory) {
        return _params;
    }

    /// @inheritdoc ITaskMarket
    function auditPool() external view returns (uint256) {
        return _pool.balance;
    }

    /// @inheritdoc ITaskMarket
    function balanceOf(address node) external view returns (uint256) {
        return _balances[node];
    }

    /// @inheritdoc ITaskMarket
    function taskMining() external view returns (address) {
        return _pool.taskMining;
    }

    /// @inheritdoc ITaskMarket
    function minMiningFee() external view returns (uint256) {
        return _minMiningFee;
    }

    /// @inheritdoc ITaskMarket
    function timeoutBounty() external view returns (uint256) {
        return _timeoutBounty;
    }

    // ================================================================== creation and queue

    function _validate(TaskRequest calldata req) private pure {
        if (req.taskType == TaskType.Image ? (req.numImages == 0 || req.numImages > MAX_IMAGES) : req.numImages != 0)
        {
            revert InvalidNumImages(req.taskType, req.numImages);
        }
        if (req.fee == 0) revert ZeroFee();
        if (req.fee > MAX_FEE) revert FeeTooLarge(req.fee, MAX_FEE);
        if (req.modelIds.length == 0) revert NoModels();
    }

    function _create(TaskRequest calldata req) private returns (uint256 taskId) {
        _validate(req);
        uint8 info = req.numImages | (req.alwaysAudit ? _ALWAYS_AUDIT : 0);
        (uint256 time,) = _timingWith(_params, info);
        uint256 value = req.fee / time;
        Counters storage counters = _counters;
        taskId = ++counters.lastTaskId;

        // Without a required GPU, minVram is rounded up to a VRAM tier: few queue classes.
        uint16 minVram = req.requiredGpu == 0 ? _vramTier(req.minVram) : req.minVram;
        Task storage t = _tasks[taskId];
        t.pv = counters.pv;
        t.creator = msg.sender;
        t.fee = uint80(req.fee);
        t.minVram = minVram;
        t.argsHash = req.argsHash;
        if (req.requiredGpu != 0) _taskGpu[taskId] = req.requiredGpu;
        _emitCreated(taskId, req, value, minVram);

        address node = registry.lockRandom(
            INodeRegistry.Requirement({minVram: minVram, gpu: req.requiredGpu, localModel: req.modelIds[0]}),
            _seed(taskId),
            address(0),
            address(0)
        );
        uint256 evicted = 0;
        if (node != address(0)) {
            _start(taskId, t, node, info);
        } else {
            t.status = TaskStatus.Queued;
            t.info = info;
            t.startTime = uint40(block.timestamp);
            evicted = _enqueue(taskId, req.requiredGpu, minVram, value);
        }
        token.safeTransferFrom(msg.sender, address(this), req.alwaysAudit ? req.fee * 3 : req.fee);
        if (evicted != 0) {
            Task storage e = _tasks[evicted];
            _refund(evicted, e.creator, _escrowOf(e));
        }
    }

    function _emitCreated(uint256 taskId, TaskRequest calldata req, uint256 value, uint16 minVram) private {
        emit TaskCreated(
            taskId,
            msg.sender,
            req.taskType,
            req.argsHash,
            req.modelIds,
            req.fee,
            value,
            req.numImages,
            minVram,
            req.requiredGpu,
            req.alwaysAudit
        );
    }

    /// @dev Queues the task, evicting the lowest-value task of a full queue.
    /// @return evicted The evicted task (to refund once this task's escrow is in), or 0.
    function _enqueue(uint256 taskId, bytes32 gpu, uint16 minVram, uint256 value)
        private
        returns (uint256 evicted)
    {
        uint256 bucket = TaskQueue.bucketOf(value);
        uint256 maxSize = _params.maxQueueSize;
        if (_counters.queueSize >= maxSize) {
            uint256 lowBucket;
            (evicted, lowBucket) = _lowestQueued();
            if (evicted == 0 || bucket <= lowBucket) {
                Task storage low = _tasks[evicted];
                (uint256 lowTime,) = _timing(low);
                revert QueueFull(maxSize, evicted == 0 ? 0 : uint256(low.fee) / lowTime, value);
            }
            _dequeue(evicted);
            _tasks[evicted].status = TaskStatus.Evicted;
            emit TaskEvicted(evicted, taskId);
        }
        if (gpu != 0 && registry.groupNodes(gpu, minVram) == 0) revert NoNodeForGpu(gpu, minVram);
        uint256 c = _classFor(gpu, minVram, _params.maxQueueClasses);
        _queue.push(c, bucket, taskId);
        ++_classes[c].count;
        ++_counters.queueSize;
        emit TaskQueued(taskId, value);
    }

    /// @dev The VRAM tier of a task without a required GPU: the smallest tier >= minVram. With
    ///      19 tiers there are at most 19 such queue classes; a GPU class needs a registered node
    ///      of that hardware, so cheap tasks nobody can run cannot take every class.
    function _vramTier(uint16 minVram) private pure returns (uint16) {
        uint16[19] memory tiers = [0, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 192, uint16(256)];
        for (uint256 i = 0; i < 19; ++i) {
            if (minVram <= tiers[i]) return tiers[i];
        }
        revert MinVramTooHigh(minVram, 256);
    }

    /// @dev The queue class of (gpu, minVram), allocated when new.
    function _classFor(bytes32 gpu, uint16 minVram, uint8 maxClasses) private returns (uint256 c) {
        bytes32 key = keccak256(abi.encode(gpu, minVram));
        c = _classIndex[key];
        if (c != 0) return c - 1;
        uint64 active = _counters.activeClasses;
        uint256 free = ~uint256(active) & ((uint256(1) << maxClasses) - 1);
        if (free == 0) revert TooManyQueueClasses(maxClasses);
        c = LibBit.ffs(free);
        _counters.activeClasses = active | uint64(1 << c);
        _classIndex[key] = c + 1;
        QueueClass storage qc = _classes[c];
        if (gpu != 0) qc.gpu = gpu;
        qc.minVram = minVram;
    }

    /// @dev The lowest-value queued task over all classes (the newest among equal buckets).
    function _lowestQueued() private view returns (uint256 id, uint256 bucket) {
        uint256 mask = _counters.activeClasses;
        while (mask != 0) {
            uint256 c = LibBit.ffs(mask);
            mask &= mask - 1;
            (uint256 cid, uint256 cb) = _queue.bottom(c);
            if (id == 0 || cb < bucket || (cb == bucket && cid > id)) (id, bucket) = (cid, cb);
        }
    }

    // ================================================================== internals

    /// @dev Runs `data` on the audit module in this contract's storage; bubbles up its revert.
    function _delegate(bytes memory data) private returns (bytes memory result) {
        bool ok;
        (ok, result) = auditModule.delegatecall(data);
        if (!ok) {
            /// @solidity memory-safe-assembly
            assembly {
                revert(add(result, 32), mload(result))
            }
        }
    }

    /// @dev Resolves the draw (the caller checked the status): true when drawn. Emits DrawResolved.
    function _resolve(uint256 taskId, Task storage t) private returns (bool drawn) {
        uint8 info = t.info;
        if (info & _RESOLVED_CLEAR != 0) return false;
        uint256 commitBlock = t.commitBlock;
        if (block.number <= commitBlock) revert DrawNotResolvable(taskId, commitBlock);
        if (info & _ALWAYS_AUDIT != 0) {
            drawn = true;
        } else if (block.number - commitBlock > 256) {
            // The hash is lost: drawn, so that withholding cannot dodge an audit, but forced
            // (by whoever let the hash expire), so the pool pays its auditors nothing.
            drawn = true;
            t.info = info | _FORCED;
        } else {
            drawn = uint256(keccak256(abi.encode(blockhash(commitBlock), taskId))) % _BPS
                < _paramsAt[t.pv].auditRateBps;
        }
        if (!drawn) t.info = info | _RESOLVED_CLEAR;
        emit DrawResolved(taskId, drawn);
    }

    /// @dev Every parameter within its range; a new version in the ring, used by new tasks only.
    function _setParams(Params memory p) private {
        _range(0, p.nonGenerationTime, 1, 1 hours);
        _range(1, p.secondsPerImage, 1, 1 hours);
        _range(2, p.textGenerationTime, 1, 1 hours);
        _range(3, p.maxQueueSize, 1, 10_000);
        _range(4, p.minTimeout, 10, 1 days);
        _range(5, p.timeoutFactor, 1, 20);
        _range(6, p.auditRateBps, 0, _BPS);
        _range(7, p.auditLevyBps, 0, 5000);
        _range(8, p.hammingThreshold, 0, 16);
        _range(9, p.auditWindow, 10, 1 days);
        _range(10, p.discloseWindow, 10, 1 days);
        _range(11, p.maxQueueClasses, 1, 64);
        _range(12, p.auditScan, 1, 32);
        _range(13, p.queueTimeout, 60, 30 days);
        _params = p;
        uint8 pv;
        unchecked {
            pv = _counters.pv + 1;
        }
        _counters.pv = pv;
        _paramsAt[pv] = p;
        emit ParamsChanged(p);
    }

    function _setTimeoutBounty(uint256 bounty) private {
        _range(14, bounty, 0, MAX_TIMEOUT_BOUNTY);
        _timeoutBounty = bounty;
        emit TimeoutBountyChanged(bounty);
    }

    function _range(uint8 field, uint256 value, uint256 min, uint256 max) private pure {
        if (value < min || value > max) revert ParamOutOfRange(field, value);
    }
}
