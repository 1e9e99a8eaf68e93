// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {LibBit} from "solady/utils/LibBit.sol";

import {ITaskMarketTypes} from "../interfaces/ITaskMarket.sol";
import {INodeRegistry} from "../interfaces/INodeRegistry.sol";
import {ITaskMining} from "../interfaces/IEmissionHooks.sol";
import {TaskQueue} from "./TaskQueue.sol";

/// @title Storage and shared internals of the task market
/// @notice The market is two contracts over one storage: TaskMarket (creation, queue, the
///         undrawn path, views, governance) and MarketAudits (the audit of drawn tasks), which
///         TaskMarket deploys in its constructor and runs by DELEGATECALL. Both inherit this
///         base, so their storage layouts are the same by construction. The split keeps each
///         contract under the EIP-170 code size limit; the hot path never leaves TaskMarket.
abstract contract MarketBase is ITaskMarketTypes, AccessControl, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using TaskQueue for TaskQueue.Queue;

    /// @notice Role of the relay, the only one allowed to attest deliveries.
    bytes32 public constant RELAY_ROLE = keccak256("RELAY_ROLE");
    /// @notice Largest task fee (the fee is stored in 80 bits: about 1.2 million CNX).
    uint256 public constant MAX_FEE = type(uint80).max;
    /// @notice Largest timeout bounty (setTimeoutBounty): 100 CNX.
    uint256 public constant MAX_TIMEOUT_BOUNTY = 100 ether;
    /// @notice Most images in an image task.
    uint8 public constant MAX_IMAGES = 10;

    /// @notice The CNX token.
    /// @custom:security non-reentrant
    IERC20 public immutable token;
    /// @notice The node registry.
    /// @custom:security non-reentrant
    INodeRegistry public immutable registry;

    uint256 internal constant _BPS = 10_000;
    uint8 internal constant _SCORE_ON_TIME = 10;
    uint8 internal constant _SCORE_LATE = 6;

    // Task.info bits: numImages in the low 4 bits (0 = text task), then flags.
    uint8 internal constant _IMAGES_MASK = 0x0f;
    uint8 internal constant _ALWAYS_AUDIT = 0x10;
    uint8 internal constant _RESOLVED_CLEAR = 0x20; // draw resolved: not drawn
    uint8 internal constant _LATE = 0x40; // executor committed after T
    uint8 internal constant _FORCED = 0x80; // drawn because the commit block's hash was lost

    // Audit.flags bits.
    uint8 internal constant _SEARCHING = 0x01; // still looking for auditors
    uint8 internal constant _DELIVERED = 0x02; // the relay attested delivery
    uint8 internal constant _EXEC_DONE = 0x04; // the executor was released (delivered or timed out)
    uint8 internal constant _UNLINKED = 0x08; // window over, dropped from the pending list by a scan

    /// @dev Three storage slots per task. While Queued, startTime holds the time it was queued.
    ///      `pv` is the parameter version (ring index in _paramsAt) the task was created under.
    struct Task {
        address creator;
        uint80 fee;
        uint16 minVram;
        address executor;
        uint40 startTime;
        uint32 commitBlock;
        TaskStatus status;
        uint8 info;
        uint8 pv;
        bytes32 argsHash;
    }

    /// @dev One slot per auditor.
    struct Auditor {
        address node;
        uint40 startTime;
        bool committed;
    }

    /// @dev Only drawn tasks have one. Party index: 0 executor, 1 and 2 the auditors.
    struct Audit {
        uint40 drawTime;
        uint40 discloseStart;
        uint40 prevPending;
        uint40 nextPending;
        uint16 minVram; // auditor requirement
        uint8 flags;
        uint8 disclosed; // bit per party
        uint8 slashed; // bit per party
        uint24 scoreLengths; // byte per party
        bytes32 gpu; // auditor requirement
        Auditor[2] auditors;
        bytes32[2] commitments;
    }

    /// @dev Counters touched by most transactions, in one slot.
    struct Counters {
        uint64 lastTaskId;
        uint32 queueSize;
        uint64 activeClasses; // bit per queue class in use
        uint40 auditHead; // FIFO of drawn tasks still looking for auditors
        uint40 auditTail;
        uint8 pv; // current parameter version (ring index in _paramsAt)
    }

    /// @dev A queue class: the (requiredGpu, minVram) of its tasks.
    struct QueueClass {
        bytes32 gpu;
        uint16 minVram;
        uint32 count;
    }

    /// @dev Audit pool and the task-mining hook, in one slot.
    struct PoolSlot {
        uint96 balance;
        address taskMining;
    }

    Params internal _params;
    /// @dev Parameter versions, a ring of 256: a task reads the version it was created under.
    mapping(uint256 version => Params) internal _paramsAt;
    Counters internal _counters;
    PoolSlot internal _pool;
    mapping(uint256 taskId => Task) internal _tasks;
    mapping(uint256 taskId => bytes32) internal _taskGpu; // only when a GPU is required
    mapping(uint256 taskId => bytes32) internal _execCommitment;
    mapping(uint256 taskId => Audit) internal _audits;
    mapping(uint256 taskId => mapping(uint256 party => bytes32[3])) internal _scores;
    mapping(address node => uint256) internal _current;
    mapping(address node => uint256) internal _balances;
    TaskQueue.Queue internal _queue;
    mapping(uint256 class => QueueClass) internal _classes;
    mapping(bytes32 key => uint256) internal _classIndex; // class + 1
    uint256 internal _minMiningFee;
    /// @dev Paid to whoever times out a task whose executor never committed, from that
    ///      executor's stake (nobody was paid to end such a task: docs/security.md, 5b).
    uint256 internal _timeoutBounty;
    /// @dev What slashing the executor put into the audit pool in this transaction: the most a
    ///      judged audit may pay its auditors out of the pool when the executor is slashed.
    uint256 internal transient _execSlashToPool;

    constructor(IERC20 token_, INodeRegistry registry_) {
        if (address(token_) == address(0) || address(registry_) == address(0)) revert ZeroAddress();
        token = token_;
        registry = registry_;
    }

    // ================================================================== freed nodes

    /// @dev Releases a node in the registry and, if it is Available again, gives it work.
    function _release(address node, uint8 score, bool settled) internal {
        if (registry.release(node, score, settled)) _assignWork(node);
    }

    /// @dev An Available node takes a pending audit it may do, else the best queued task it is
    ///      eligible for (highest bucket; oldest among equal buckets).
    function _assignWork(address node) internal {
        Counters memory c = _counters;
        if (c.auditHead == 0 && c.queueSize == 0) return;
        // Still allowed to work: governance may have raised the client version since it joined.
        if (!registry.isEligible(node, INodeRegistry.Requirement(0, 0, 0))) return;
        (bytes32 gpu, uint16 vram) = registry.hardware(node);
        if (c.auditHead != 0 && _takeAudit(node, gpu, vram, c.auditHead)) return;
        if (c.queueSize == 0) return;
        uint256 best = 0;
        uint256 bestBucket = 0;
        uint256 mask = c.activeClasses;
        while (mask != 0) {
            uint256 cl = LibBit.ffs(mask);
            mask &= mask - 1;
            QueueClass storage qc = _classes[cl];
            if (!_fits(qc.gpu, qc.minVram, gpu, vram)) continue;
            (uint256 id, uint256 b) = _queue.top(cl);
            if (best == 0 || b > bestBucket || (b == bestBucket && id < best)) (best, bestBucket) = (id, b);
        }
        if (best == 0) return;
        _dequeue(best);
        registry.lock(node);
        Task storage t = _tasks[best];
        _start(best, t, node, t.info);
    }

    /// @dev Scans up to auditScan pending audits for one the node may take: one whose search
    ///      window is open, whose requirement it meets, that it is not already a party of, and
    ///      whose commitment came after the node was online (joined or resumed), so that a node
    ///      cannot resume to snipe an audit it has seen. Entries past their window leave the
    ///      list; entries this node cannot take move to the back, so unservable entries at the
    ///      head cannot hide the ones behind them.
    function _takeAudit(address node, bytes32 gpu, uint16 vram, uint256 id) internal returns (bool) {
        uint256 scan = _params.auditScan;
        uint256 since = registry.onlineSince(node);
        uint256 last = _counters.auditTail; // each entry is looked at once, even when moved
        for (uint256 k = 0; k < scan && id != 0; ++k) {
            Audit storage a = _audits[id];
            Task storage t = _tasks[id];
            uint256 next = a.nextPending;
            if (block.timestamp > uint256(a.drawTime) + _paramsAt[t.pv].auditWindow) {
                // Off the list; timeout() still ends the search and settles the task.
                _unlinkPending(a);
                a.flags |= _UNLINKED;
            } else if (
                _fits(a.gpu, a.minVram, gpu, vram) && node != t.executor && node != a.auditors[0].node
                    && since < t.commitBlock
            ) {
                registry.lock(node);
                _addAuditor(id, a, node);
                return true;
            } else if (next != 0) {
                _unlinkPending(a);
                _appendPending(id, a);
            }
            if (id == last) break;
            id = next;
        }
        return false;
    }

    /// @dev Appends a drawn task to the pending-audit list.
    function _appendPending(uint256 taskId, Audit storage a) internal {
        uint40 tail = _counters.auditTail;
        a.prevPending = tail;
        if (tail == 0) _counters.auditHead = uint40(taskId);
        else _audits[tail].nextPending = uint40(taskId);
        _counters.auditTail = uint40(taskId);
    }

    /// @dev Ends the auditor search of a drawn task (window over, or found none in time).
    function _endSearch(uint256 taskId, Audit storage a) internal {
        if (a.flags & _UNLINKED == 0) _unlinkPending(a);
        a.flags &= ~(_SEARCHING | _UNLINKED);
        emit AuditSearchEnded(taskId, a.auditors[0].node == address(0) ? 0 : 1);
    }

    function _setAuditor(uint256 taskId, Audit storage a, uint256 i, address node) internal {
        a.auditors[i] = Auditor({node: node, startTime: uint40(block.timestamp), committed: false});
        _current[node] = taskId;
        emit AuditorAssigned(taskId, node);
    }

    /// @dev Adds a pulled auditor to a pending audit; a full audit leaves the pending list.
    function _addAuditor(uint256 taskId, Audit storage a, address node) internal {
        if (a.auditors[0].node == address(0)) {
            _setAuditor(taskId, a, 0, node);
        } else {
            _setAuditor(taskId, a, 1, node);
            _unlinkPending(a);
            a.flags &= ~_SEARCHING;
        }
    }

    function _unlinkPending(Audit storage a) internal {
        uint40 prev = a.prevPending;
        uint40 next = a.nextPending;
        if (prev == 0) _counters.auditHead = next;
        else _audits[prev].nextPending = next;
        if (next == 0) _counters.auditTail = prev;
        else _audits[next].prevPending = prev;
        (a.prevPending, a.nextPending) = (0, 0);
    }

    /// @dev Assigns the executor (the node is already locked in the registry).
    function _start(uint256 taskId, Task storage t, address node, uint8 info) internal {
        t.executor = node;
        t.startTime = uint40(block.timestamp);
        t.status = TaskStatus.Started;
        t.info = info;
        _current[node] = taskId;
        emit TaskStarted(taskId, node);
    }

    /// @dev Removes a queued task from the queue and its class.
    function _dequeue(uint256 taskId) internal {
        uint256 c = _queue.remove(taskId);
        --_counters.queueSize;
        QueueClass storage qc = _classes[c];
        uint32 left = qc.count - 1;
        if (left != 0) {
            qc.count = left;
            return;
        }
        delete _classIndex[keccak256(abi.encode(qc.gpu, qc.minVram))];
        delete _classes[c];
        _counters.activeClasses &= ~uint64(1 << c);
    }

    /// @dev Whether a node with (gpu, vram) meets the requirement (reqGpu, minVram).
    function _fits(bytes32 reqGpu, uint16 minVram, bytes32 gpu, uint16 vram) internal pure returns (bool) {
        return reqGpu == 0 ? vram >= minVram : (reqGpu == gpu && vram == minVram);
    }

    // ================================================================== settlement

    /// @dev Credits the executor fee minus the audit levy; the levy joins the audit pool.
    function _payExecutor(uint256 taskId, Task storage t, address executor, uint256 fee) internal {
        uint256 levy = fee * _paramsAt[t.pv].auditLevyBps / _BPS;
        if (levy != 0) {
            _pool.balance += uint96(levy);
            emit AuditLevy(taskId, levy);
        }
        _credit(taskId, executor, fee - levy);
    }

    function _credit(uint256 taskId, address node, uint256 amount) internal {
        if (amount != 0) _balances[node] += amount;
        emit NodePaid(taskId, node, amount);
    }

    /// @dev Tells the task-mining hook (if set) that `node` completed a task successfully, when
    ///      the task shows real demand: its fee is at least _minMiningFee, it names no GPU (so
    ///      the creator could not restrict it to its own hardware), and `node` is not its
    ///      creator. Called last in every settlement, after all state changes.
    function _recordSuccess(uint256 taskId, Task storage t, address node) internal {
        address mining = _pool.taskMining;
        if (mining == address(0) || node == t.creator || _taskGpu[taskId] != 0) return;
        if (t.fee < _minMiningFee) return;
        ITaskMining(mining).recordSuccess(node);
    }

    /// @dev Final state of a started task: Success or Refunded (with `refund` to the creator).
    function _finish(uint256 taskId, Task storage t, Outcome outcome, uint256 refund) internal {
        t.status = outcome == Outcome.Success ? TaskStatus.Success : TaskStatus.Refunded;
        emit TaskSettled(taskId, outcome);
        if (refund != 0) _refund(taskId, t.creator, refund);
    }

    function _refund(uint256 taskId, address creator, uint256 amount) internal {
        emit TaskRefunded(taskId, creator, amount);
        token.safeTransfer(creator, amount);
    }

    // ================================================================== helpers

    function _escrowOf(Task storage t) internal view returns (uint256) {
        return t.info & _ALWAYS_AUDIT != 0 ? uint256(t.fee) * 3 : t.fee;
    }

    function _isSlashed(Audit storage a, uint256 party) internal view returns (bool) {
        return a.slashed & (1 << party) != 0;
    }

    /// @dev The party index and commitment of `node` in the task (commitment 0 if none).
    function _partyOf(uint256 taskId, Task storage t, Audit storage a, address node)
        internal
        view
        returns (uint256 party, bytes32 commitment)
    {
        if (node == address(0)) return (0, 0);
        if (node == t.executor) return (0, _execCommitment[taskId]);
        for (uint256 i = 0; i < 2; ++i) {
            if (a.auditors[i].node == node) return (i + 1, a.commitments[i]);
        }
        return (0, 0);
    }

    /// @dev The estimated time T of a task and its execution timeout, under the parameters the
    ///      task was created with.
    function _timing(Task storage t) internal view returns (uint256 time, uint256 timeoutSecs) {
        return _timingWith(_paramsAt[t.pv], t.info);
    }

    /// @dev T (from the info bits) and the execution timeout max(minTimeout, timeoutFactor x T).
    function _timingWith(Params storage p, uint8 info) internal view returns (uint256 time, uint256 timeoutSecs) {
        uint256 images = info & _IMAGES_MASK;
        time = images == 0
            ? uint256(p.nonGenerationTime) + p.textGenerationTime
            : uint256(p.nonGenerationTime) + images * p.secondsPerImage;
        timeoutSecs = time * p.timeoutFactor;
        uint256 floor = p.minTimeout;
        if (timeoutSecs < floor) timeoutSecs = floor;
    }

    /// @dev Executor selection randomness: prevrandao mixed with the task id. A creator can
    ///      predict it (see docs/security.md: executor steering); what it could gain from
    ///      steering is taken away elsewhere (task mining rules, random audits).
    function _seed(uint256 taskId) internal view returns (uint256) {
        return uint256(keccak256(abi.encode(block.prevrandao, taskId)));
    }

    /// @dev Auditor selection randomness: the hash of the executor's commit block (unknown when
    ///      it committed, fixed afterwards: no caller can re-roll it), with the task and seat.
    function _auditSeed(uint256 taskId, uint256 commitBlock, uint256 seat) internal view returns (uint256) {
        return uint256(keccak256(abi.encode(blockhash(commitBlock), taskId, seat)));
    }
}
