// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {INodeRegistry} from "../interfaces/INodeRegistry.sol";
import {MarketBase} from "./MarketBase.sol";
import {ScoreMatch} from "./ScoreMatch.sol";

/// @title The audit module of the task market, as TaskMarket calls it (DELEGATECALL)
interface IMarketAudits {
    /// @notice Thrown when the module is called directly instead of through TaskMarket.
    error NotDelegated();

    /// @notice Starts the audit of a task whose draw came out drawn; `flags` tells whether the
    ///         executor delivered and is done; a done executor is released with `executorScore`.
    function startAudit(uint256 taskId, uint8 flags, uint8 executorScore) external;

    /// @notice An auditor's commit (ITaskMarket.commit while the task is Auditing).
    function commitAudit(uint256 taskId, bytes32 commitment) external;

    /// @notice The relay's delivery attestation of a task already under audit.
    function attestAudited(uint256 taskId) external;

    /// @notice ITaskMarket.disclose.
    function disclose(uint256 taskId, bytes calldata score, bytes32 salt) external;

    /// @notice The timeouts of a task under audit (ITaskMarket.timeout, Auditing or Disclosing).
    function timeoutAudit(uint256 taskId) external;
}

/// @title The audit of drawn tasks: auditor selection, commitments, disclosure, judgement
/// @notice Runs only in TaskMarket's storage, through DELEGATECALL from TaskMarket (which
///         deploys it); see MarketBase. Every function reverts when called directly.
contract MarketAudits is MarketBase, IMarketAudits {
    address private immutable _market;

    modifier onlyDelegated() {
        if (address(this) != _market) revert NotDelegated();
        _;
    }

    /// @param token_ The CNX token (the market's).
    /// @param registry_ The node registry (the market's).
    constructor(IERC20 token_, INodeRegistry registry_) MarketBase(token_, registry_) {
        _market = msg.sender;
    }

    // ================================================================== entry points

    /// @inheritdoc IMarketAudits
    function startAudit(uint256 taskId, uint8 flags, uint8 executorScore) external onlyDelegated {
        Task storage t = _tasks[taskId];
        Audit storage a = _startAudit(taskId, t, flags);
        if (flags & _EXEC_DONE != 0) _release(t.executor, executorScore, false);
        _advance(taskId, t, a);
    }

    /// @inheritdoc IMarketAudits
    function commitAudit(uint256 taskId, bytes32 commitment) external onlyDelegated {
        Task storage t = _tasks[taskId];
        (uint256 time, uint256 timeoutSecs) = _timing(t);
        Audit storage a = _audits[taskId];
        for (uint256 i = 0; i < 2; ++i) {
            Auditor storage au = a.auditors[i];
            if (au.node != msg.sender || au.committed || _isSlashed(a, i + 1)) continue;
            uint256 start = au.startTime;
            uint256 deadline = start + timeoutSecs;
            if (block.timestamp > deadline) revert DeadlinePassed(taskId, deadline);
            au.committed = true;
            a.commitments[i] = commitment;
            emit TaskCommitted(taskId, msg.sender, commitment);
            _release(msg.sender, block.timestamp > start + time ? _SCORE_LATE : _SCORE_ON_TIME, false);
            _advance(taskId, t, a);
            return;
        }
        revert NotAssigned(taskId, msg.sender);
    }

    /// @inheritdoc IMarketAudits
    function attestAudited(uint256 taskId) external onlyDelegated {
        Task storage t = _tasks[taskId];
        Audit storage a = _audits[taskId];
        if (a.flags & _EXEC_DONE != 0) revert WrongStatus(taskId, t.status);
        (, uint256 timeoutSecs) = _timing(t);
        uint256 deadline = t.startTime + timeoutSecs;
        if (block.timestamp > deadline) revert DeadlinePassed(taskId, deadline);
        a.flags |= _DELIVERED | _EXEC_DONE;
        emit TaskDelivered(taskId);
        _release(t.executor, t.info & _LATE != 0 ? _SCORE_LATE : _SCORE_ON_TIME, false);
        _advance(taskId, t, a);
    }

    /// @inheritdoc IMarketAudits
    function disclose(uint256 taskId, bytes calldata score, bytes32 salt) external onlyDelegated {
        Task storage t = _tasks[taskId];
        if (t.status != TaskStatus.Disclosing) revert WrongStatus(taskId, t.status);
        Audit storage a = _audits[taskId];
        uint256 deadline = uint256(a.discloseStart) + _paramsAt[t.pv].discloseWindow;
        if (block.timestamp > deadline) revert DeadlinePassed(taskId, deadline);
        (uint256 party, bytes32 commitment) = _partyOf(taskId, t, a, msg.sender);
        if (commitment == 0) revert NotAssigned(taskId, msg.sender);
        if (a.disclosed & (1 << party) != 0) revert AlreadyDisclosed(taskId, msg.sender);
        if (score.length > ScoreMatch.MAX_LENGTH) revert ScoreTooLong(taskId, score.length);
        if (keccak256(abi.encode(taskId, msg.sender, score, salt)) != commitment) {
            revert CommitmentMismatch(taskId, msg.sender);
        }
        a.disclosed |= uint8(1 << party);
        a.scoreLengths |= uint24(score.length << (8 * party));
        for (uint256 w = 0; w * 32 < score.length; ++w) {
            _scores[taskId][party][w] = ScoreMatch.word(score, w);
        }
        emit ScoreDisclosed(taskId, msg.sender, score);
        _advance(taskId, t, a);
    }

    /// @inheritdoc IMarketAudits
    function timeoutAudit(uint256 taskId) external onlyDelegated {
        Task storage t = _tasks[taskId];
        TaskStatus status = t.status;
        Params storage p = _paramsAt[t.pv];
        (, uint256 timeoutSecs) = _timingWith(p, t.info);
        Audit storage au = _audits[taskId];
        bool progressed = false;
        if (au.flags & _EXEC_DONE == 0 && block.timestamp > t.startTime + timeoutSecs) {
            au.flags |= _EXEC_DONE;
            emit TaskTimedOut(taskId, t.executor);
            _release(t.executor, 0, false);
            progressed = true;
        }
        if (status == TaskStatus.Auditing) {
            progressed = _auditorTimeouts(taskId, au, timeoutSecs) || progressed;
            if (au.flags & _SEARCHING != 0 && block.timestamp > uint256(au.drawTime) + p.auditWindow) {
                _endSearch(taskId, au);
                progressed = true;
            }
        } else if (block.timestamp > uint256(au.discloseStart) + p.discloseWindow) {
            _slashSilentDisclosers(taskId, t, au);
            progressed = true;
        }
        if (!progressed) revert NothingDue(taskId);
        _advance(taskId, t, au);
    }

    // ================================================================== auditors

    /// @dev Starts the audit of a drawn task: tries to lock two auditors at once, and queues the
    ///      task as a pending audit for what is missing.
    function _startAudit(uint256 taskId, Task storage t, uint8 flags) private returns (Audit storage a) {
        t.status = TaskStatus.Auditing;
        a = _audits[taskId];
        a.drawTime = uint40(block.timestamp);
        a.flags = flags;
        address executor = t.executor;
        bytes32 gpu;
        uint16 minVram;
        if (t.info & _IMAGES_MASK == 0) {
            // Text results are bit-exact only on the same hardware: auditors need the executor's.
            (gpu, minVram) = registry.hardware(executor);
        } else {
            (gpu, minVram) = (_taskGpu[taskId], t.minVram);
        }
        if (gpu != 0) a.gpu = gpu;
        a.minVram = minVram;
        INodeRegistry.Requirement memory req = INodeRegistry.Requirement({minVram: minVram, gpu: gpu, localModel: 0});
        uint256 commitBlock = t.commitBlock;
        uint8 found = 0;
        for (; found < 2; ++found) {
            // Seeded by the commit block's hash and drawn only among nodes online before it.
            address node = registry.lockAuditor(
                req, _auditSeed(taskId, commitBlock, found), executor, a.auditors[0].node, commitBlock
            );
            if (node == address(0)) break;
            _setAuditor(taskId, a, found, node);
        }
        if (found < 2) {
            a.flags = flags | _SEARCHING;
            _appendPending(taskId, a);
            emit AuditPending(taskId, 2 - found);
        }
    }

    /// @dev Slashes the auditors whose commit deadline has passed. True if any.
    function _auditorTimeouts(uint256 taskId, Audit storage a, uint256 timeoutSecs) private returns (bool any) {
        for (uint256 i = 0; i < 2; ++i) {
            Auditor storage au = a.auditors[i];
            if (au.node == address(0) || au.committed || _isSlashed(a, i + 1)) continue;
            if (block.timestamp <= uint256(au.startTime) + timeoutSecs) continue;
            emit TaskTimedOut(taskId, au.node);
            // The registry's slash also ends its Busy spell (Busy -> Quit).
            _slash(taskId, a, i + 1, au.node, SlashReason.NoCommit);
            any = true;
        }
    }

    function _slashSilentDisclosers(uint256 taskId, Task storage t, Audit storage a) private {
        uint8 owed = _partiesOwing(a);
        for (uint256 party = 0; party < 3; ++party) {
            if (owed & (1 << party) == 0 || a.disclosed & (1 << party) != 0) continue;
            address node = party == 0 ? t.executor : a.auditors[party - 1].node;
            _slash(taskId, a, party, node, SlashReason.NoDisclosure);
        }
    }

    function _slash(uint256 taskId, Audit storage a, uint256 party, address node, SlashReason reason) private {
        a.slashed |= uint8(1 << party);
        uint256 toPool = registry.slash(node);
        _pool.balance += uint96(toPool);
        if (party == 0) _execSlashToPool += toPool;
        emit NodeSlashed(taskId, node, reason, toPool);
    }

    /// @dev Parties that must disclose: the executor and every committed auditor, unless slashed.
    function _partiesOwing(Audit storage a) private view returns (uint8 mask) {
        mask = 1;
        if (a.auditors[0].committed) mask |= 2;
        if (a.auditors[1].committed) mask |= 4;
        mask &= ~a.slashed;
    }

    // ================================================================== judgement

    /// @dev Moves an audit forward: opens disclosure when every auditor that will take part has
    ///      committed and the executor is done; settles when every remaining party disclosed.
    function _advance(uint256 taskId, Task storage t, Audit storage a) private {
        if (t.status == TaskStatus.Auditing) {
            uint8 flags = a.flags;
            if (flags & _SEARCHING != 0 || flags & _EXEC_DONE == 0) return;
            bool anyCommitted = false;
            for (uint256 i = 0; i < 2; ++i) {
                Auditor storage au = a.auditors[i];
                if (au.node == address(0) || _isSlashed(a, i + 1)) continue;
                if (!au.committed) return; // still working
                anyCommitted = true;
            }
            if (!anyCommitted) {
                _settleUnaudited(taskId, t, a);
                return;
            }
            t.status = TaskStatus.Disclosing;
            a.discloseStart = uint40(block.timestamp);
            emit DisclosureOpened(taskId);
        } else if (t.status == TaskStatus.Disclosing) {
            uint8 owed = _partiesOwing(a);
            if (a.disclosed & owed == owed) _settleAudit(taskId, t, a);
        }
    }

    /// @dev Compares the disclosed scores and settles a drawn task (docs/protocol.md, the task lifecycle).
    ///      A party counts when it disclosed and was not slashed; it "agrees" when its score
    ///      matches another counting party's score, or when it is the only one counting. With
    ///      three counting, a party matching nobody while the other two match is slashed.
    function _settleAudit(uint256 taskId, Task storage t, Audit storage a) private {
        uint256 present = a.disclosed & ~a.slashed;
        bool[3] memory agree = _agreement(taskId, t, a, present);
        uint256 fee = t.fee;
        uint256 escrow = _escrowOf(t);
        Outcome outcome;
        if (present & 1 == 0) {
            outcome = Outcome.ExecutorSlashed; // slashed for not disclosing
        } else if (agree[0]) {
            outcome = a.flags & _DELIVERED != 0 ? Outcome.Success : Outcome.NotDelivered;
        } else if (present == 7 && agree[1] && agree[2]) {
            outcome = Outcome.ExecutorSlashed;
            _slash(taskId, a, 0, t.executor, SlashReason.Disagreed);
        } else {
            outcome = Outcome.NoConsensus;
        }
        if (present & 1 != 0 && outcome != Outcome.ExecutorSlashed) registry.settle(t.executor);
        uint256 refund = escrow;
        if (outcome == Outcome.Success) {
            refund -= fee;
            _payExecutor(taskId, t, t.executor, fee);
        }
        refund -= _settleAuditors(taskId, t, a, present, agree, outcome);
        _finish(taskId, t, outcome, refund);
        if (outcome == Outcome.Success) _recordSuccess(taskId, t, t.executor);
        for (uint256 i = 0; i < 2; ++i) {
            if (agree[i + 1]) _recordSuccess(taskId, t, a.auditors[i].node);
        }
    }

    /// @dev agree[p] for each party p (see _settleAudit).
    function _agreement(uint256 taskId, Task storage t, Audit storage a, uint256 present)
        private
        view
        returns (bool[3] memory agree)
    {
        bool m01 = _pairMatch(taskId, t, a, present, 0, 1);
        bool m02 = _pairMatch(taskId, t, a, present, 0, 2);
        bool m12 = _pairMatch(taskId, t, a, present, 1, 2);
        bool alone = present == 1 || present == 2 || present == 4;
        agree[0] = present & 1 != 0 && (m01 || m02 || alone);
        agree[1] = present & 2 != 0 && (m01 || m12 || alone);
        agree[2] = present & 4 != 0 && (m02 || m12 || alone);
    }

    /// @dev Whether parties x and y are both present and their disclosed scores match.
    function _pairMatch(uint256 taskId, Task storage t, Audit storage a, uint256 present, uint256 x, uint256 y)
        private
        view
        returns (bool)
    {
        if (present & (1 << x) == 0 || present & (1 << y) == 0) return false;
        uint256 lens = a.scoreLengths;
        return ScoreMatch.matches(
            _scores[taskId][x],
            (lens >> (8 * x)) & 0xff,
            _scores[taskId][y],
            (lens >> (8 * y)) & 0xff,
            t.info & _IMAGES_MASK != 0,
            _paramsAt[t.pv].hammingThreshold
        );
    }

    /// @dev Slashes the dissenting auditor or settles the others, then pays those that agree:
    ///      the task fee each from the escrow with alwaysAudit; otherwise out of the pool, and
    ///      only for audits nobody could force (docs/security.md, pool drain): a random draw
    ///      whose executor was paid (its levy fed the pool) gets the fee each, pro rata when the
    ///      pool is short; an audit that slashed the executor shares at most what that slash
    ///      put into the pool; a forced draw (the commit block's hash was let expire), an
    ///      undelivered result or no consensus pays nothing from the pool.
    ///      Returns what was paid out of the escrow.
    function _settleAuditors(
        uint256 taskId,
        Task storage t,
        Audit storage a,
        uint256 present,
        bool[3] memory agree,
        Outcome outcome
    ) private returns (uint256 paidFromEscrow) {
        for (uint256 party = 1; party < 3; ++party) {
            address node = a.auditors[party - 1].node;
            if (node == address(0) || !a.auditors[party - 1].committed || _isSlashed(a, party)) continue;
            if (present == 7 && !agree[party] && agree[0] && agree[3 - party]) {
                _slash(taskId, a, party, node, SlashReason.Disagreed);
            } else {
                registry.settle(node);
            }
        }
        uint256 paid = (agree[1] ? 1 : 0) + (agree[2] ? 1 : 0);
        if (paid == 0) return 0;
        uint256 each = t.fee;
        uint256 total = each * paid;
        if (t.info & _ALWAYS_AUDIT != 0) {
            paidFromEscrow = total;
        } else {
            uint256 budget = 0;
            if (outcome == Outcome.Success && t.info & _FORCED == 0) budget = _pool.balance;
            else if (outcome == Outcome.ExecutorSlashed) budget = _execSlashToPool;
            if (budget < total) {
                total = budget - (budget % paid); // pro rata, whole wei each
                each = total / paid;
            }
            _pool.balance -= uint96(total);
        }
        for (uint256 party = 1; party < 3; ++party) {
            if (agree[party]) _credit(taskId, a.auditors[party - 1].node, each);
        }
    }

    /// @dev Settles a drawn task that no auditor could check (none found, or all silent):
    ///      as if undrawn. A missing verifier must not cost an honest node.
    function _settleUnaudited(uint256 taskId, Task storage t, Audit storage a) private {
        registry.settle(t.executor);
        uint256 refund = _escrowOf(t);
        bool delivered = a.flags & _DELIVERED != 0;
        if (delivered) {
            refund -= t.fee;
            _payExecutor(taskId, t, t.executor, t.fee);
        }
        _finish(taskId, t, delivered ? Outcome.Success : Outcome.NotDelivered, refund);
        if (delivered) _recordSuccess(taskId, t, t.executor);
    }
}
