"""Each outcome of the task lifecycle (docs/protocol.md) as its own test, on the real
token, registry and market."""

from __future__ import annotations

import ape
import pytest

from crynux_common.enums import NodeStatus, Outcome, SlashReason, TaskStatus, TaskType
from tests.conftest import CNX
from tests.market.conftest import MIN_STAKE, Request, by_address, flip_bits, image_score

FEE = 10 * CNX
LEVY = FEE // 10


def _events(tx, market, name):
    return list(tx.events.filter(getattr(market, name)))


def _settled(tx, market):
    (e,) = _events(tx, market, "TaskSettled")
    return Outcome(e.outcome)


@pytest.fixture
def three(helpers, nodes):
    """Three joined nodes: an executor and two possible auditors."""
    for n in nodes[:3]:
        helpers.join(n)
    return nodes[:3]


class Audited:
    """A drawn task: executor committed and delivered, two auditors assigned."""

    def __init__(self, helpers, market, nodes, creator, score, deliver=True, **req):
        self.h = helpers
        self.market = market
        self.task_id, _ = helpers.create(creator, **req)
        self.executor = by_address(nodes, helpers.task(self.task_id).executor)
        self.score = score
        _, self.salt = helpers.commit(self.task_id, self.executor, score)
        if deliver:
            self.tx = helpers.deliver(self.task_id)
        else:
            self.tx = market.resolveDraw(self.task_id, sender=creator)
        info = helpers.task(self.task_id)
        assert info.drawn and info.drawResolved
        self.auditors = [by_address(nodes, a) for a in info.auditors]
        self.salts = {}

    def auditor_commit(self, i, score):
        tx, self.salts[i] = self.h.commit(self.task_id, self.auditors[i], score)
        return tx

    def disclose_executor(self):
        return self.h.disclose(self.task_id, self.executor, self.score, self.salt)

    def disclose_auditor(self, i, score):
        return self.h.disclose(self.task_id, self.auditors[i], score, self.salts[i])


def test_notDrawn_executorPaidMinusLevy(helpers, market, registry, nodes, creators, token):
    helpers.set_params(auditRateBps=0)
    helpers.join(nodes[0])
    before = token.balanceOf(creators[0])
    task_id, tx = helpers.create(creators[0])
    assert token.balanceOf(creators[0]) == before - FEE
    info = helpers.task(task_id)
    assert info.status == TaskStatus.STARTED and info.executor == nodes[0].address
    assert market.currentTask(nodes[0]) == task_id
    helpers.commit(task_id, nodes[0], image_score(1, 1))
    assert market.currentTask(nodes[0]) == task_id
    tx = helpers.deliver(task_id)
    (draw,) = _events(tx, market, "DrawResolved")
    assert not draw.drawn
    assert _settled(tx, market) == Outcome.SUCCESS
    info = helpers.task(task_id)
    assert (
        info.status == TaskStatus.SUCCESS
        and info.delivered
        and info.drawResolved
        and not info.drawn
    )
    assert market.balanceOf(nodes[0]) == FEE - LEVY
    assert market.auditPool() == LEVY
    assert market.currentTask(nodes[0]) == 0
    assert registry.statusOf(nodes[0]) == NodeStatus.AVAILABLE
    assert registry.nodeInfo(nodes[0]).unsettled == 0
    # the executor withdraws
    bal = token.balanceOf(nodes[0])
    market.withdraw(sender=nodes[0])
    assert token.balanceOf(nodes[0]) == bal + FEE - LEVY
    assert market.balanceOf(nodes[0]) == 0
    with ape.reverts(market.NothingToWithdraw, node=nodes[0].address):
        market.withdraw(sender=nodes[0])


def test_drawn_allAgree_everyonePaid(helpers, market, registry, nodes, creators, three):
    helpers.set_params(auditRateBps=10_000)
    score = image_score(2, 7)
    a = Audited(helpers, market, nodes, creators[0], score, num_images=2, fee=FEE)
    assert {x.address for x in a.auditors} == {n.address for n in three} - {a.executor.address}
    assert len(_events(a.tx, market, "AuditorAssigned")) == 2
    # the executor is free again once delivered; its task stays unsettled until judged
    assert registry.statusOf(a.executor) == NodeStatus.AVAILABLE
    assert registry.nodeInfo(a.executor).unsettled == 1
    assert market.currentTask(a.auditors[0]) == a.task_id
    a.auditor_commit(0, flip_bits(score, 3))  # within the Hamming threshold (5)
    assert market.currentTask(a.auditors[0]) == 0
    tx = a.auditor_commit(1, score)
    assert len(_events(tx, market, "DisclosureOpened")) == 1
    assert helpers.task(a.task_id).status == TaskStatus.DISCLOSING
    a.disclose_executor()
    a.disclose_auditor(0, flip_bits(score, 3))
    tx = a.disclose_auditor(1, score)
    assert _settled(tx, market) == Outcome.SUCCESS
    assert helpers.task(a.task_id).status == TaskStatus.SUCCESS
    assert market.balanceOf(a.executor) == FEE - LEVY
    # the pool held only this task's levy: the auditors share it pro rata
    for aud in a.auditors:
        assert market.balanceOf(aud) == LEVY // 2
        assert registry.nodeInfo(aud).unsettled == 0
    assert market.auditPool() == 0
    assert registry.nodeInfo(a.executor).unsettled == 0


def test_cheatingExecutor_slashedAndCreatorRefunded(
    helpers, market, registry, nodes, creators, token, three, treasury
):
    helpers.set_params(auditRateBps=10_000)
    honest = image_score(1, 1)
    cheat = image_score(1, 99)
    a = Audited(helpers, market, nodes, creators[0], cheat)
    a.auditor_commit(0, honest)
    a.auditor_commit(1, flip_bits(honest, 1))
    a.disclose_executor()
    a.disclose_auditor(0, honest)
    creator_before = token.balanceOf(creators[0])
    treasury_before = token.balanceOf(treasury)
    tx = a.disclose_auditor(1, flip_bits(honest, 1))
    assert _settled(tx, market) == Outcome.EXECUTOR_SLASHED
    (slash,) = _events(tx, market, "NodeSlashed")
    assert slash.node == a.executor.address and slash.reason == SlashReason.DISAGREED
    assert slash.toAuditPool == MIN_STAKE // 2
    assert token.balanceOf(creators[0]) == creator_before + FEE
    assert token.balanceOf(treasury) == treasury_before + MIN_STAKE // 2
    assert registry.statusOf(a.executor) == NodeStatus.QUIT
    assert market.balanceOf(a.executor) == 0
    # the auditors are paid the full fee out of the pool the slash filled
    for aud in a.auditors:
        assert market.balanceOf(aud) == FEE
    assert market.auditPool() == MIN_STAKE // 2 - 2 * FEE
    assert helpers.task(a.task_id).status == TaskStatus.REFUNDED


def test_lazyAuditor_slashed(helpers, market, registry, nodes, creators, three):
    helpers.set_params(auditRateBps=10_000)
    score = image_score(1, 5)
    a = Audited(helpers, market, nodes, creators[0], score)
    lazy = image_score(1, 6)
    a.auditor_commit(0, score)
    a.auditor_commit(1, lazy)
    a.disclose_executor()
    a.disclose_auditor(1, lazy)
    tx = a.disclose_auditor(0, score)
    assert _settled(tx, market) == Outcome.SUCCESS
    (slash,) = _events(tx, market, "NodeSlashed")
    assert slash.node == a.auditors[1].address and slash.reason == SlashReason.DISAGREED
    assert registry.statusOf(a.auditors[1]) == NodeStatus.QUIT
    assert market.balanceOf(a.executor) == FEE - LEVY
    # the pool (levy + slash) pays the honest auditor its fee; the lazy one gets nothing
    assert market.balanceOf(a.auditors[0]) == FEE
    assert market.balanceOf(a.auditors[1]) == 0
    assert market.auditPool() == LEVY + MIN_STAKE // 2 - FEE


def test_noTwoAgree_refundNoSlash(helpers, market, registry, nodes, creators, token, three):
    helpers.set_params(auditRateBps=10_000)
    a = Audited(helpers, market, nodes, creators[0], image_score(1, 1))
    a.auditor_commit(0, image_score(1, 2))
    a.auditor_commit(1, b"")  # an error score
    a.disclose_executor()
    a.disclose_auditor(0, image_score(1, 2))
    before = token.balanceOf(creators[0])
    tx = a.disclose_auditor(1, b"")
    assert _settled(tx, market) == Outcome.NO_CONSENSUS
    assert not _events(tx, market, "NodeSlashed")
    assert token.balanceOf(creators[0]) == before + FEE
    for n in three:
        assert market.balanceOf(n) == 0
        assert registry.nodeInfo(n).unsettled == 0
        assert registry.statusOf(n) == NodeStatus.AVAILABLE


def test_errorScores_agree(helpers, market, nodes, creators, three):
    """Invalid arguments: everyone commits the empty error score; that is an agreement."""
    helpers.set_params(auditRateBps=10_000)
    a = Audited(helpers, market, nodes, creators[0], b"")
    a.auditor_commit(0, b"")
    a.auditor_commit(1, b"")
    a.disclose_executor()
    a.disclose_auditor(0, b"")
    tx = a.disclose_auditor(1, b"")
    assert _settled(tx, market) == Outcome.SUCCESS


def test_executorSilent_refundedAndScoredZero(helpers, market, registry, nodes, creators, token):
    helpers.join(nodes[0])
    before = token.balanceOf(creators[0])
    task_id, _ = helpers.create(creators[0])
    with ape.reverts(market.NothingDue, taskId=task_id):
        market.timeout(task_id, sender=creators[1])
    helpers.travel(181)
    tx = market.timeout(task_id, sender=creators[1])
    assert _settled(tx, market) == Outcome.NOT_COMMITTED
    assert token.balanceOf(creators[0]) == before
    assert helpers.task(task_id).status == TaskStatus.REFUNDED
    assert registry.qosOf(nodes[0]) < 10 * 10**6
    assert registry.statusOf(nodes[0]) == NodeStatus.AVAILABLE
    assert registry.nodeInfo(nodes[0]).unsettled == 0
    # too late to commit now
    with ape.reverts(market.NotAssigned):
        helpers.commit(task_id, nodes[0], image_score(1, 1))


def test_committedNotDelivered_refunded(helpers, market, registry, nodes, creators, token):
    helpers.set_params(auditRateBps=0)
    helpers.join(nodes[0])
    before = token.balanceOf(creators[0])
    task_id, _ = helpers.create(creators[0])
    helpers.commit(task_id, nodes[0], image_score(1, 1))
    helpers.travel(181)
    with ape.reverts(market.DeadlinePassed):
        helpers.deliver(task_id)
    tx = market.timeout(task_id, sender=creators[1])
    assert _settled(tx, market) == Outcome.NOT_DELIVERED
    assert token.balanceOf(creators[0]) == before
    assert market.balanceOf(nodes[0]) == 0
    assert registry.qosOf(nodes[0]) < 10 * 10**6
    assert registry.nodeInfo(nodes[0]).unsettled == 0


def test_withheldResult_afterDrawnAudit_stillJudged(
    helpers, market, registry, nodes, creators, token, three
):
    """A cheater that sees the draw and withholds its result is judged and slashed anyway."""
    helpers.set_params(auditRateBps=10_000)
    honest = image_score(1, 1)
    a = Audited(helpers, market, nodes, creators[0], image_score(1, 66), deliver=False)
    assert registry.statusOf(a.executor) == NodeStatus.BUSY  # not delivered yet
    a.auditor_commit(0, honest)
    tx = a.auditor_commit(1, honest)
    assert not _events(tx, market, "DisclosureOpened")  # the executor may still deliver
    helpers.travel(181)
    before = token.balanceOf(creators[0])
    tx = market.timeout(a.task_id, sender=creators[1])
    assert [e.node for e in _events(tx, market, "TaskTimedOut")] == [a.executor.address]
    assert len(_events(tx, market, "DisclosureOpened")) == 1
    a.disclose_executor()
    a.disclose_auditor(0, honest)
    tx = a.disclose_auditor(1, honest)
    assert _settled(tx, market) == Outcome.EXECUTOR_SLASHED
    assert registry.statusOf(a.executor) == NodeStatus.QUIT
    assert token.balanceOf(creators[0]) == before + FEE


def test_withheldHonestResult_notPaid(helpers, market, nodes, creators, token, three):
    """Drawn, audited and agreed, but never delivered: the executor is not paid."""
    helpers.set_params(auditRateBps=10_000)
    score = image_score(1, 1)
    a = Audited(helpers, market, nodes, creators[0], score, deliver=False)
    a.auditor_commit(0, score)
    a.auditor_commit(1, score)
    helpers.travel(181)
    market.timeout(a.task_id, sender=creators[1])
    a.disclose_executor()
    a.disclose_auditor(0, score)
    before = token.balanceOf(creators[0])
    tx = a.disclose_auditor(1, score)
    assert _settled(tx, market) == Outcome.NOT_DELIVERED
    assert market.balanceOf(a.executor) == 0
    assert token.balanceOf(creators[0]) == before + FEE


def test_auditorSilent_slashedAndAuditSettlesAmongTheRest(
    helpers, market, registry, nodes, creators, three
):
    helpers.set_params(auditRateBps=10_000)
    score = image_score(1, 3)
    a = Audited(helpers, market, nodes, creators[0], score)
    a.auditor_commit(0, score)
    with ape.reverts(market.NothingDue, taskId=a.task_id):
        market.timeout(a.task_id, sender=creators[1])
    helpers.travel(181)
    with ape.reverts(market.DeadlinePassed):
        a.auditor_commit(1, score)
    tx = market.timeout(a.task_id, sender=creators[1])
    (slash,) = _events(tx, market, "NodeSlashed")
    assert slash.node == a.auditors[1].address and slash.reason == SlashReason.NO_COMMIT
    assert registry.statusOf(a.auditors[1]) == NodeStatus.QUIT
    assert len(_events(tx, market, "DisclosureOpened")) == 1
    a.disclose_executor()
    tx = a.disclose_auditor(0, score)
    assert _settled(tx, market) == Outcome.SUCCESS
    assert market.balanceOf(a.executor) == FEE - LEVY
    assert market.balanceOf(a.auditors[0]) == FEE
    assert registry.nodeInfo(a.auditors[1]).unsettled == 0


def test_discloserSilent_slashed(helpers, market, registry, nodes, creators, three):
    helpers.set_params(auditRateBps=10_000)
    score = image_score(1, 4)
    a = Audited(helpers, market, nodes, creators[0], score)
    a.auditor_commit(0, score)
    a.auditor_commit(1, score)
    a.disclose_executor()
    a.disclose_auditor(1, score)
    helpers.travel(15 * 60 + 1)
    with ape.reverts(market.DeadlinePassed):
        a.disclose_auditor(0, score)
    tx = market.timeout(a.task_id, sender=creators[1])
    (slash,) = _events(tx, market, "NodeSlashed")
    assert slash.node == a.auditors[0].address and slash.reason == SlashReason.NO_DISCLOSURE
    assert _settled(tx, market) == Outcome.SUCCESS
    assert market.balanceOf(a.executor) == FEE - LEVY
    assert market.balanceOf(a.auditors[1]) == FEE
    assert market.balanceOf(a.auditors[0]) == 0
    assert registry.nodeInfo(a.auditors[0]).unsettled == 0


def test_silentExecutorAtDisclosure_slashedAndRefunded(
    helpers, market, registry, nodes, creators, token, three
):
    helpers.set_params(auditRateBps=10_000)
    score = image_score(1, 4)
    a = Audited(helpers, market, nodes, creators[0], score)
    a.auditor_commit(0, score)
    a.auditor_commit(1, score)
    a.disclose_auditor(0, score)
    a.disclose_auditor(1, score)
    helpers.travel(15 * 60 + 1)
    before = token.balanceOf(creators[0])
    tx = market.timeout(a.task_id, sender=creators[1])
    (slash,) = _events(tx, market, "NodeSlashed")
    assert slash.node == a.executor.address and slash.reason == SlashReason.NO_DISCLOSURE
    assert _settled(tx, market) == Outcome.EXECUTOR_SLASHED
    assert token.balanceOf(creators[0]) == before + FEE
    assert market.balanceOf(a.executor) == 0


def test_drawAfter256Blocks_countsAsDrawn(helpers, market, nodes, creators, chain, three):
    helpers.set_params(auditRateBps=0)
    task_id, _ = helpers.create(creators[0])
    executor = by_address(nodes, helpers.task(task_id).executor)
    helpers.commit(task_id, executor, image_score(1, 1))
    chain.mine(257)
    tx = helpers.deliver(task_id)
    (draw,) = _events(tx, market, "DrawResolved")
    assert draw.drawn
    info = helpers.task(task_id)
    assert info.status == TaskStatus.AUDITING and info.drawn
    assert len(_events(tx, market, "AuditorAssigned")) == 2


def test_drawWithin256Blocks_followsRate(helpers, market, nodes, creators, chain, three):
    helpers.set_params(auditRateBps=0)
    task_id, _ = helpers.create(creators[0])
    executor = by_address(nodes, helpers.task(task_id).executor)
    helpers.commit(task_id, executor, image_score(1, 1))
    chain.mine(255)
    tx = helpers.deliver(task_id)
    (draw,) = _events(tx, market, "DrawResolved")
    assert not draw.drawn


def test_resolveDraw_byAnyone_clearThenDeliver(helpers, market, nodes, creators):
    helpers.set_params(auditRateBps=0)
    helpers.join(nodes[0])
    task_id, _ = helpers.create(creators[0])
    helpers.commit(task_id, nodes[0], image_score(1, 1))
    tx = market.resolveDraw(task_id, sender=creators[2])
    assert not _events(tx, market, "DrawResolved")[0].drawn
    with ape.reverts(market.DrawAlreadyResolved, taskId=task_id):
        market.resolveDraw(task_id, sender=creators[2])
    info = helpers.task(task_id)
    assert info.drawResolved and not info.drawn and info.status == TaskStatus.COMMITTED
    tx = helpers.deliver(task_id)
    assert not _events(tx, market, "DrawResolved")
    assert _settled(tx, market) == Outcome.SUCCESS


def test_alwaysAudit_escrowsThreeFees_auditorsPaidFromEscrow(
    helpers, market, nodes, creators, token, three
):
    helpers.set_params(auditRateBps=0)
    before = token.balanceOf(creators[0])
    score = image_score(1, 8)
    a = Audited(helpers, market, nodes, creators[0], score, always_audit=True)
    assert token.balanceOf(creators[0]) == before - 3 * FEE
    a.auditor_commit(0, score)
    a.auditor_commit(1, score)
    a.disclose_executor()
    a.disclose_auditor(0, score)
    tx = a.disclose_auditor(1, score)
    assert _settled(tx, market) == Outcome.SUCCESS
    assert market.balanceOf(a.executor) == FEE - LEVY
    for aud in a.auditors:
        assert market.balanceOf(aud) == FEE
    assert market.auditPool() == LEVY
    assert token.balanceOf(creators[0]) == before - 3 * FEE


def test_noAuditorFound_withinWindow_paidAsNotDrawn(
    helpers, market, registry, nodes, creators, token
):
    helpers.set_params(auditRateBps=10_000)
    helpers.join(nodes[0])
    task_id, _ = helpers.create(creators[0], always_audit=True)
    helpers.commit(task_id, nodes[0], image_score(1, 1))
    tx = helpers.deliver(task_id)
    (pending,) = _events(tx, market, "AuditPending")
    assert pending.missing == 2
    before = token.balanceOf(creators[0])
    helpers.travel(30 * 60 + 1)
    tx = market.timeout(task_id, sender=creators[1])
    assert _events(tx, market, "AuditSearchEnded")[0].found == 0
    assert _settled(tx, market) == Outcome.SUCCESS
    assert market.balanceOf(nodes[0]) == FEE - LEVY
    assert token.balanceOf(creators[0]) == before + 2 * FEE  # the unused auditor fees
    assert registry.nodeInfo(nodes[0]).unsettled == 0


def test_oneAuditorOnly_twoPartyAudit(helpers, market, nodes, creators):
    helpers.set_params(auditRateBps=10_000)
    helpers.join(nodes[0])
    helpers.join(nodes[1])
    score = image_score(1, 2)
    task_id, _ = helpers.create(creators[0])
    executor = by_address(nodes, helpers.task(task_id).executor)
    _, salt = helpers.commit(task_id, executor, score)
    tx = helpers.deliver(task_id)
    (assigned,) = _events(tx, market, "AuditorAssigned")
    auditor = by_address(nodes, assigned.auditor)
    _, asalt = helpers.commit(task_id, auditor, score)
    assert helpers.task(task_id).status == TaskStatus.AUDITING  # still looking for a second
    helpers.travel(30 * 60 + 1)
    tx = market.timeout(task_id, sender=creators[1])
    assert _events(tx, market, "AuditSearchEnded")[0].found == 1
    assert len(_events(tx, market, "DisclosureOpened")) == 1
    helpers.disclose(task_id, executor, score, salt)
    tx = helpers.disclose(task_id, auditor, score, asalt)
    assert _settled(tx, market) == Outcome.SUCCESS
    assert market.balanceOf(executor) == FEE - LEVY
    assert market.balanceOf(auditor) == LEVY  # all the pool holds


def test_pendingAudit_takenBeforeQueuedTask(helpers, market, nodes, creators, registry):
    """Audits go before new tasks: a node that becomes Available takes the audit first."""
    helpers.set_params(auditRateBps=10_000)
    helpers.join(nodes[0])
    helpers.join(nodes[1])
    t1, _ = helpers.create(creators[0])
    e1 = by_address(nodes, helpers.task(t1).executor)
    t2, _ = helpers.create(creators[0])
    e2 = by_address(nodes, helpers.task(t2).executor)
    t3, _ = helpers.create(creators[0], fee=100 * CNX)  # queued, high value
    assert helpers.task(t3).status == TaskStatus.QUEUED
    helpers.commit(t1, e1, image_score(1, 1))
    tx = helpers.deliver(t1)  # drawn; e2 busy, e1 excluded: pending; e1 takes the queued t3
    assert _events(tx, market, "AuditPending")[0].missing == 2
    assert helpers.task(t3).executor == e1.address
    helpers.commit(t2, e2, image_score(1, 2))
    tx = helpers.deliver(t2)  # t2 drawn too; e2 is freed and takes t1's audit first
    assigned = [(e.taskId, e.auditor) for e in _events(tx, market, "AuditorAssigned")]
    assert (t1, e2.address) in assigned
    assert helpers.task(t1).auditors[0] == e2.address


def test_textTask_auditorsNeedExecutorsGpu(helpers, market, nodes, creators):
    helpers.set_params(auditRateBps=10_000)
    helpers.join(nodes[0], gpu="A100", vram=80)
    helpers.join(nodes[1], gpu="RTX 4090", vram=24)
    helpers.join(nodes[2], gpu="RTX 4090", vram=24)
    helpers.join(nodes[3], gpu="A100", vram=80)
    score = bytes(range(32))
    # pause the 4090s so the A100s run the text task
    market_req = Request(task_type=TaskType.TEXT, num_images=0, min_vram=40)
    task_id, _ = helpers.create(creators[0], market_req)
    executor = by_address(nodes, helpers.task(task_id).executor)
    assert executor.address in (nodes[0].address, nodes[3].address)
    helpers.commit(task_id, executor, score)
    tx = helpers.deliver(task_id)
    assigned = [e.auditor for e in _events(tx, market, "AuditorAssigned")]
    other_a100 = nodes[3] if executor == nodes[0] else nodes[0]
    assert assigned == [other_a100.address]  # never a 4090, never the executor
    assert _events(tx, market, "AuditPending")[0].missing == 1


def test_nodeAsksToPauseWhileBusy_pausedAfterTask(helpers, market, registry, nodes, creators):
    helpers.set_params(auditRateBps=0)
    helpers.join(nodes[0])
    t1, _ = helpers.create(creators[0])
    t2, _ = helpers.create(creators[0])
    assert helpers.task(t2).status == TaskStatus.QUEUED
    registry.pause(sender=nodes[0])
    helpers.commit(t1, nodes[0], image_score(1, 1))
    helpers.deliver(t1)
    assert registry.statusOf(nodes[0]) == NodeStatus.PAUSED
    assert helpers.task(t2).status == TaskStatus.QUEUED  # a paused node pulls nothing
    tx = registry.resume(sender=nodes[0])  # the registry tells the market: it pulls t2
    assert helpers.task(t2).executor == nodes[0].address
    assert registry.statusOf(nodes[0]) == NodeStatus.BUSY
    assert len(_events(tx, market, "TaskStarted")) == 1
