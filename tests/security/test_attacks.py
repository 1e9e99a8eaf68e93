"""Each attack of docs/security.md, run to completion against the wired contracts.

Every test plays a coalition (a creator, its own nodes, any caller) against honest nodes and
asserts what the coalition ends with: its CNX (token balances + stakes + market balances) and
emission must not grow, and the honest parties must lose nothing. Attacks that are not yet
defended are strict xfails: they run the attack and show it still pays (docs/security.md says
why and what is planned); a strict xfail that starts passing fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass

import ape
import pytest

from crynux_common.enums import NodeStatus, Outcome, TaskStatus, TaskType
from tests.conftest import CNX
from tests.market.conftest import MIN_STAKE, Request, h, image_score

EVIL = "EVIL-GPU-9000"  # a GPU name only the attacker's nodes declare


@dataclass
class Coalition:
    """The attacker's accounts: one creator and its nodes."""

    creator: object
    nodes: list

    def accounts(self) -> list:
        return [self.creator, *self.nodes]


def holdings(token, registry, market, accounts) -> int:
    """CNX the accounts hold: balances + stakes in the registry + balances in the market."""
    total = 0
    for a in accounts:
        total += token.balanceOf(a) + market.balanceOf(a)
        if registry.statusOf(a) != NodeStatus.NONE:
            total += registry.nodeInfo(a).stake
    return total


@pytest.fixture
def coalition(creators, nodes) -> Coalition:
    return Coalition(creator=creators[2], nodes=list(nodes[8:12]))


@pytest.fixture
def honest(nodes) -> list:
    return list(nodes[0:4])


def _fund_pool(helpers, market, creators, node, fee: int = 1_000 * CNX) -> None:
    """An honest undrawn task whose 10% levy puts CNX into the audit pool."""
    helpers.set_params(auditRateBps=0)
    t, _ = helpers.create(creators[0], fee=fee)
    assert helpers.task(t).executor == node.address
    helpers.commit(t, node, image_score(1, t))
    helpers.deliver(t)
    assert market.auditPool() == fee // 10


def _evil_request(**kw) -> Request:
    return Request(min_vram=24, required_gpu=h(EVIL), **kw)


# ---------------------------------------------------------------- 1. audit-pool drain


def test_attack_poolDrain_forcedDrawByLettingTheHashExpire_doesNotPay(
    helpers, market, registry, token, chain, creators, coalition, honest
):
    """Three attacker nodes alone on their GPU; the attacker's task names that GPU. The
    executor commits, nobody resolves the draw for 257 blocks, timeout() makes it drawn, the
    two other attacker nodes audit and agree. Before: each auditor was paid `fee` from the
    shared pool. Now a forced draw pays nothing from the pool."""
    helpers.join(honest[0])
    _fund_pool(helpers, market, creators, honest[0])
    helpers.set_params(auditRateBps=500)
    ex, a1, a2 = coalition.nodes[:3]
    helpers.join(ex, gpu=EVIL, vram=24)
    before = holdings(token, registry, market, coalition.accounts())
    pool = market.auditPool()
    fee = 500 * CNX
    t, _ = helpers.create(coalition.creator, _evil_request(fee=fee))
    assert helpers.task(t).executor == ex.address
    # The auditors join before the commit (they were online "before"), as the attack needs.
    helpers.join(a1, gpu=EVIL, vram=24)
    helpers.join(a2, gpu=EVIL, vram=24)
    score = image_score(1, 99)
    _, salt_e = helpers.commit(t, ex, score)
    chain.mine(257)
    helpers.travel(200)  # past the executor's deadline
    tx = market.timeout(t, sender=coalition.creator)
    assert tx.events.filter(market.DrawResolved)[0].drawn
    info = helpers.task(t)
    assert set(info.auditors) == {a1.address, a2.address}
    salts = {}
    for a in (a1, a2):
        _, salts[a.address] = helpers.commit(t, a, score)
    helpers.disclose(t, ex, score, salt_e)
    helpers.disclose(t, a1, score, salts[a1.address])
    tx = helpers.disclose(t, a2, score, salts[a2.address])
    assert tx.events.filter(market.TaskSettled)[0].outcome == Outcome.NOT_DELIVERED
    assert market.auditPool() == pool, "the pool paid for a draw the attacker forced"
    assert holdings(token, registry, market, coalition.accounts()) <= before


def test_attack_poolDrain_withholdResultWhenDrawn_doesNotPay(
    helpers, market, registry, token, creators, coalition, honest
):
    """The executor learns the draw as soon as its commit block exists. When drawn with its
    own auditors it withholds the result (no levy is ever paid) and lets the audit run: the
    creator is refunded and the auditors agree. An audit of an undelivered result pays
    nothing from the pool."""
    helpers.join(honest[0])
    _fund_pool(helpers, market, creators, honest[0])
    helpers.set_params(auditRateBps=10_000)  # "the draw came out drawn"
    ex, a1, a2 = coalition.nodes[:3]
    for n in (ex, a1, a2):
        helpers.join(n, gpu=EVIL, vram=24)
    before = holdings(token, registry, market, coalition.accounts())
    pool = market.auditPool()
    t, _ = helpers.create(coalition.creator, _evil_request(fee=500 * CNX))
    ex = next(n for n in coalition.nodes if n.address == helpers.task(t).executor)
    score = image_score(1, 7)
    _, salt_e = helpers.commit(t, ex, score)
    helpers.travel(1)
    market.resolveDraw(t, sender=coalition.creator)
    auditors = [n for n in coalition.nodes if n.address in helpers.task(t).auditors]
    assert len(auditors) == 2
    salts = {a.address: helpers.commit(t, a, score)[1] for a in auditors}
    helpers.travel(200)
    market.timeout(t, sender=coalition.creator)  # the executor's deadline: not delivered
    helpers.disclose(t, ex, score, salt_e)
    for a in auditors:
        tx = helpers.disclose(t, a, score, salts[a.address])
    assert tx.events.filter(market.TaskSettled)[0].outcome == Outcome.NOT_DELIVERED
    assert market.auditPool() == pool
    assert holdings(token, registry, market, coalition.accounts()) <= before


def test_attack_poolDrain_withholdUndrawnResultsToSaveTheLevy_levyTakenFromStake(
    helpers, market, registry, token, creators, coalition
):
    """The other half of selective delivery: an executor that sees its task was not drawn
    withholds the result, so that its coalition never pays the levy that funds the pool (and
    only ever delivers drawn tasks audited by its own nodes). Committing and not delivering
    an undrawn task now costs the levy, taken from the executor's stake into the pool."""
    helpers.set_params(auditRateBps=0)
    ex = coalition.nodes[0]
    helpers.join(ex, gpu=EVIL, vram=24)
    before = holdings(token, registry, market, coalition.accounts())
    pool = market.auditPool()
    fee = 500 * CNX
    t, _ = helpers.create(coalition.creator, _evil_request(fee=fee))
    helpers.commit(t, ex, image_score(1, t))
    helpers.travel(1)
    assert not market.resolveDraw(t, sender=coalition.creator).events.filter(market.DrawResolved)[0].drawn
    helpers.travel(200)
    tx = market.timeout(t, sender=coalition.creator)
    assert tx.events.filter(market.TaskSettled)[0].outcome == Outcome.NOT_DELIVERED
    assert tx.events.filter(market.ExecutorPenalized)[0].amount == fee // 10
    assert market.auditPool() == pool + fee // 10
    assert holdings(token, registry, market, coalition.accounts()) == before - fee // 10


def test_attack_poolDrain_slashOwnExecutor_auditorsGetAtMostTheSlash(
    helpers, market, registry, token, creators, coalition, honest
):
    """A big fee, own auditors, and the executor disagreeing on purpose: before, the
    auditors took 2 x fee from the pool for one 400 CNX stake. Now they share at most what
    the executor's slash put into the pool."""
    helpers.join(honest[0])
    _fund_pool(helpers, market, creators, honest[0], fee=9_000 * CNX)
    helpers.set_params(auditRateBps=10_000)
    for n in coalition.nodes[:3]:
        helpers.join(n, gpu=EVIL, vram=24)
    before = holdings(token, registry, market, coalition.accounts())
    t, _ = helpers.create(coalition.creator, _evil_request(fee=5_000 * CNX))
    ex = next(n for n in coalition.nodes if n.address == helpers.task(t).executor)
    _, salt_e = helpers.commit(t, ex, image_score(1, 1))
    helpers.travel(1)
    helpers.deliver(t)
    auditors = [n for n in coalition.nodes if n.address in helpers.task(t).auditors]
    honest_score = image_score(1, 2)
    salts = {a.address: helpers.commit(t, a, honest_score)[1] for a in auditors}
    helpers.disclose(t, ex, image_score(1, 1), salt_e)
    for a in auditors:
        tx = helpers.disclose(t, a, honest_score, salts[a.address])
    assert tx.events.filter(market.TaskSettled)[0].outcome == Outcome.EXECUTOR_SLASHED
    paid = sum(e.amount for e in tx.events.filter(market.NodePaid))
    assert paid <= MIN_STAKE // 2  # half of the slash joined the pool
    assert holdings(token, registry, market, coalition.accounts()) < before


# ---------------------------------------------------------------- 2. pending-audit sniping


def test_attack_pendingAuditSniping_resumedNodesNeverAudit(
    helpers, market, registry, token, creators, coalition, honest
):
    """No node is idle at the draw, so the audit waits. The attacker resumes two paused
    nodes at that moment to take both seats and slash the honest executor with a fake
    score. Nodes online only since the commitment never audit it: the honest node that
    frees up later takes the audit and the executor is paid."""
    helpers.set_params(auditRateBps=10_000)
    ex, other = honest[0], honest[1]
    helpers.join(ex)
    p1, p2 = coalition.nodes[:2]
    for p in (p1, p2):
        helpers.join(p)
        registry.pause(sender=p)
    busy_task, _ = helpers.create(creators[0])
    assert helpers.task(busy_task).executor == ex.address
    helpers.join(other)
    t, _ = helpers.create(creators[0])
    assert helpers.task(t).executor == other.address
    score = image_score(1, t)
    _, salt = helpers.commit(t, other, score)
    helpers.travel(1)
    tx = helpers.deliver(t)  # drawn; `ex` is busy, the attacker's nodes paused: pending
    assert tx.events.filter(market.AuditPending)[0].missing == 2
    for p in (p1, p2):
        registry.resume(sender=p)
        assert registry.statusOf(p) == NodeStatus.AVAILABLE  # resumed, but not an auditor
    assert helpers.task(t).auditors == [ape.utils.ZERO_ADDRESS] * 2
    stake_before = registry.nodeInfo(other).stake
    # The honest node frees up and takes the audit.
    helpers.commit(busy_task, ex, image_score(1, busy_task))
    helpers.travel(1)
    helpers.deliver(busy_task)
    assert ex.address in helpers.task(t).auditors
    assert p1.address not in helpers.task(t).auditors and p2.address not in helpers.task(t).auditors
    assert registry.nodeInfo(other).stake == stake_before


# ---------------------------------------------------------------- 3. grinding


def test_attack_grindAuditorsByChoosingTheResolveBlock_outcomeIsFixed(
    helpers, market, chain, creators, honest, coalition
):
    """A contract resolving the draw reverts until the auditors drawn are its own. The
    auditors are seeded by the commit block's hash: resolving in another block draws the
    same auditors, so retrying gains nothing."""
    helpers.set_params(auditRateBps=10_000)
    for n in honest[:2] + coalition.nodes[:4]:
        helpers.join(n)
    t, _ = helpers.create(creators[0])
    ex = next(n for n in honest[:2] + coalition.nodes if n.address == helpers.task(t).executor)
    helpers.commit(t, ex, image_score(1, t))
    seen = set()
    for wait in (1, 3, 7, 20):
        snap = chain.snapshot()
        chain.mine(wait)
        market.resolveDraw(t, sender=coalition.creator)
        seen.add(tuple(helpers.task(t).auditors))
        chain.restore(snap)
    assert len(seen) == 1, f"the resolving block changed the auditors: {seen}"


# ---------------------------------------------------------------- 5. task-mining farming


@pytest.fixture
def task_mining(project, owner, token, market, chain):
    tm = owner.deploy(project.TaskMining, token, owner, chain.pending_timestamp)
    tm.grantRole(tm.REPORTER_ROLE(), market, sender=owner)
    token.grantRole(token.MINTER_ROLE(), tm, sender=owner)
    market.setEmission(tm, 1 * CNX, sender=owner)
    return tm


def test_attack_taskMiningFarming_oneWeiAndOwnTasks_countForNothing(
    helpers, market, token, task_mining, creators, coalition, honest
):
    """30 one-wei tasks and restricted tasks for the attacker's own node, against one honest
    10 CNX task: before, they took 30/31 of the month's task-mining budget. Tiny fees,
    restricted eligibility and self-execution count for nothing now."""
    helpers.set_params(auditRateBps=0)
    node = coalition.nodes[0]
    helpers.join(node, gpu=EVIL, vram=24)
    month = task_mining.currentMonth()
    for i in range(30):
        req = _evil_request(fee=1) if i % 2 == 0 else Request(fee=1, min_vram=24)
        t, _ = helpers.create(coalition.creator, req)
        assert helpers.task(t).executor == node.address
        helpers.commit(t, node, image_score(1, t))
        helpers.deliver(t)
    # A node creating a real-fee task for itself counts neither.
    token.approve(market, 2**256 - 1, sender=node)
    t, _ = helpers.create(node, fee=10 * CNX)
    assert helpers.task(t).executor == node.address
    helpers.commit(t, node, image_score(1, t))
    helpers.deliver(t)
    assert task_mining.tasksOf(month, node) == 0
    # An honest task of another creator, broad, with a real fee, counts.
    t, _ = helpers.create(creators[0], fee=10 * CNX)
    helpers.commit(t, node, image_score(1, t))
    helpers.deliver(t)
    assert task_mining.tasksOf(month, node) == 1


# ---------------------------------------------------------------- 6. queue classes


def test_attack_queueClassesBlockedWith1WeiTasks_honestTasksStillQueue(
    helpers, market, registry, creators, coalition
):
    """Before: 16 queued 1-wei tasks with a minVram nobody has filled every queue class and
    no task could be queued at any fee, for good. Now minVram without a GPU falls into at
    most 19 tiers, a GPU class needs a registered node of that hardware, and queued tasks
    expire."""
    helpers.set_params(maxQueueClasses=64)
    for vram in range(30, 30 + 64):  # nobody has this much VRAM: the tasks queue
        helpers.create(coalition.creator, fee=1, min_vram=vram + 100)
    with ape.reverts(market.NoNodeForGpu):
        helpers.create(coalition.creator, fee=1, min_vram=24, required_gpu=h("NOBODY"))
    t, tx = helpers.create(creators[0], fee=10 * CNX, min_vram=16)
    assert helpers.task(t).status == TaskStatus.QUEUED
    assert market.queueSize() <= 65
    # Queued tasks expire: every task reaches a final state.
    helpers.travel(market.params().queueTimeout + 1)
    tx = market.timeout(t, sender=coalition.creator)
    assert tx.events.filter(market.TaskExpired)
    info = helpers.task(t)
    assert info.status == TaskStatus.EXPIRED and info.startTime == 0 and info.deadline == 0


# ---------------------------------------------------------------- 7. head-of-line audits


def test_attack_headOfLineAudits_unservableEntriesCannotHideAnAudit(
    helpers, market, registry, creators, coalition, honest
):
    """Eight unservable alwaysAudit tasks at the head of the pending list hid every later
    audit from freed nodes. Entries a freed node cannot take now move to the back."""
    helpers.set_params(auditRateBps=0)
    evil = coalition.nodes[0]
    helpers.join(evil, gpu=EVIL, vram=24)
    for i in range(9):
        t, _ = helpers.create(coalition.creator, _evil_request(fee=1, always_audit=True))
        helpers.commit(t, evil, image_score(1, t))
        helpers.travel(1)
        helpers.deliver(t)  # drawn (alwaysAudit), no other EVIL node: pending
    registry.pause(sender=evil)
    ex, a1, a2 = honest[:3]
    helpers.join(ex)
    t, _ = helpers.create(creators[0], always_audit=True)
    helpers.join(a1)
    helpers.join(a2)
    busy = [helpers.create(creators[0])[0] for _ in range(2)]  # nobody idle at the draw
    assert {helpers.task(b).executor for b in busy} == {a1.address, a2.address}
    _, salt = helpers.commit(t, ex, image_score(1, t))
    helpers.travel(1)
    helpers.deliver(t)
    assert helpers.task(t).auditors == [ape.utils.ZERO_ADDRESS] * 2  # pending behind nine
    # The two honest nodes free up (each at most twice) and reach the audit.
    for _ in range(2):
        for n in (a1, a2):
            cur = market.currentTask(n)
            if cur and helpers.task(cur).executor == n.address:
                helpers.commit(cur, n, image_score(1, cur))
                helpers.travel(1)
                helpers.deliver(cur)
    assert set(helpers.task(t).auditors) == {a1.address, a2.address}


# ---------------------------------------------------------------- 8. hardware groups


def test_attack_hardwareGroupsExhausted_realGpuStillJoins(
    helpers, registry, owner, creators, coalition, honest
):
    """One account joining under new GPU names and quitting filled every group; a real new
    GPU could no longer join. Groups without nodes are reused."""
    p = dict(registry.params().items())
    p["maxGroups"] = 4
    registry.setParams(p, sender=owner)
    node = coalition.nodes[0]
    for i in range(4):
        helpers.join(node, gpu=f"FAKE-{i}", vram=24)
        registry.quit(sender=node)
    helpers.join(honest[0], gpu="RTX 5090", vram=32)
    assert registry.statusOf(honest[0]) == NodeStatus.AVAILABLE


# ---------------------------------------------------------------- 9. kick-out


def test_attack_kickOutWashedByRejoining_qosFollowsTheAddress(
    helpers, market, registry, owner, creators, coalition
):
    """A node kicked for low QoS rejoined at once with QoS 10. It now comes back with the QoS
    it was kicked with, and the next bad score kicks it again."""
    p = dict(registry.params().items())
    p["qosWindow"], p["minTasksForKick"] = 1, 1
    registry.setParams(p, sender=owner)
    helpers.set_params(auditRateBps=0, minTimeout=10)
    node = coalition.nodes[0]
    helpers.join(node)
    t, _ = helpers.create(creators[0])
    helpers.travel(400)
    tx = market.timeout(t, sender=creators[0])
    assert tx.events.filter(registry.NodeKickedOut)
    helpers.join(node)
    assert registry.qosOf(node) == 0
    assert registry.weightOf(node) == 0  # never drawn again until it earns it back


# ---------------------------------------------------------------- 10. busy forever


def test_attack_busyForeverOnOwnTask_timeoutPaysTheCaller(
    helpers, market, registry, token, creators, coalition, honest
):
    """A node starts its own task and never works on it: Busy, keeping its node-mining
    weight, serving no one, and nobody was paid to call timeout(). Now whoever times it out is
    paid the timeout bounty from the idle executor's stake, so keepers end it at the deadline."""
    node = coalition.nodes[0]
    helpers.join(node, gpu=EVIL, vram=24)
    t, _ = helpers.create(coalition.creator, _evil_request(fee=1))
    assert registry.statusOf(node) == NodeStatus.BUSY
    stake = registry.nodeInfo(node).stake
    keeper = honest[0]
    helpers.travel(181)
    tx = market.timeout(t, sender=keeper)
    bounty = market.timeoutBounty()
    assert bounty == 1 * CNX
    assert tx.events.filter(market.TimeoutBountyPaid)[0].amount == bounty
    assert market.balanceOf(keeper) == bounty
    assert registry.nodeInfo(node).stake == stake - bounty
    assert registry.statusOf(node) == NodeStatus.AVAILABLE  # released, with a 0 task score
    assert registry.qosOf(node) < 10 * 10**6


# ---------------------------------------------------------------- 11. parameters


def test_attack_retroactiveParameters_runningTasksKeepTheirDeadlines(
    helpers, market, creators, honest
):
    """Shortening the timeout slashed auditors 61 s after assignment though they had 180 s.
    A task keeps the parameters it was created with; every parameter has a range."""
    helpers.join(honest[0])
    t, _ = helpers.create(creators[0])
    deadline = helpers.task(t).deadline
    helpers.set_params(minTimeout=10, timeoutFactor=1)
    assert helpers.task(t).deadline == deadline
    helpers.travel(61)
    with ape.reverts(market.NothingDue, taskId=t):
        market.timeout(t, sender=creators[1])
    with ape.reverts(market.ParamOutOfRange, field=9, value=0):
        helpers.set_params(auditWindow=0)
    with ape.reverts(market.ParamOutOfRange, field=10, value=0):
        helpers.set_params(discloseWindow=0)
    with ape.reverts(market.ParamOutOfRange, field=4, value=0):
        helpers.set_params(minTimeout=0)


# ---------------------------------------------------------------- not yet defended


@pytest.mark.xfail(strict=True, reason="attack 4: text tasks need a hardware class (docs/security.md)")
def test_attack_textTaskOnUniqueHardware_isAudited(helpers, market, creators, coalition, honest):
    """A node alone in its hardware group takes a text task; with alwaysAudit and three
    honest nodes idle, no auditor can match its hardware and the garbage is paid."""
    for n in honest[:3]:
        helpers.join(n)
    evil = coalition.nodes[0]
    t = None
    helpers.join(evil, gpu=EVIL, vram=24)
    for _ in range(8):  # until the draw puts the text task on the unique node
        t, _ = helpers.create(
            creators[0], task_type=TaskType.TEXT, num_images=0, always_audit=True, min_vram=24
        )
        if helpers.task(t).executor == evil.address:
            break
    helpers.commit(t, evil, b"\x01" * 32)
    helpers.travel(1)
    tx = helpers.deliver(t)
    assert tx.events.filter(market.AuditorAssigned), "nobody audits the unique node"
