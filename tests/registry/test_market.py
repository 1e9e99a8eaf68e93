"""The market-facing functions: lock, release (QoS, kick-out), settle, slash, access control,
and governance parameters."""
from __future__ import annotations

import ape
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crynux_common.enums import NodeStatus as S
from tests.conftest import CNX
from tests.registry.conftest import MIN_STAKE, QOS_ONE, ZERO, Req, isolated, run_task

DEFAULT_PARAMS = (400 * CNX, 10_000, 4 * QOS_ONE, 20, 50, 1, 0, 0, 32, 64)


def ema(qos: int, score: int, window: int = 50) -> int:
    """The contract's QoS update, in Python."""
    return (qos * (window - 1) + score * QOS_ONE) // window


def set_params(registry, owner, **changes):
    names = ["minStake", "slashBps", "kickQos", "minTasksForKick", "qosWindow", "versionMajor", "minMinor",
             "minPatch", "maxGroups", "maxModels"]
    p = list(registry.params())
    for k, v in changes.items():
        p[names.index(k)] = v
    registry.setParams(p, sender=owner)


# ------------------------------------------------------------------ access control


@pytest.mark.parametrize("call", ["lockRandom", "lock", "release", "settle", "slash"])
def test_marketFunctions_failIfNotMarket(registry, nodes, join, call):
    a = nodes[0]
    join(a)
    args = {
        "lockRandom": (Req().t(), 1, ZERO, ZERO),
        "lock": (a,),
        "release": (a, 10, True),
        "settle": (a,),
        "slash": (a,),
    }[call]
    with ape.reverts(registry.NotMarket, caller=a.address):
        getattr(registry, call)(*args, sender=a)


def test_admin_failsIfNotAdmin(registry, nodes):
    a = nodes[0]
    role = registry.DEFAULT_ADMIN_ROLE()
    for fn, args in [
        ("setParams", (DEFAULT_PARAMS,)),
        ("setMarket", (a,)),
        ("setNodeMining", (a,)),
        ("setTreasury", (a,)),
    ]:
        with ape.reverts(registry.AccessControlUnauthorizedAccount, account=a.address, neededRole=role):
            getattr(registry, fn)(*args, sender=a)


def test_admin_settersEmit(registry, owner, market, treasury, nodes):
    tx = registry.setMarket(nodes[0], sender=owner)
    ev = tx.events.filter(registry.MarketChanged)[0]
    assert ev.previousMarket == market.address and ev.newMarket == nodes[0].address
    assert registry.market() == nodes[0].address
    tx = registry.setNodeMining(nodes[1], sender=owner)
    assert tx.events.filter(registry.NodeMiningChanged)[0].newNodeMining == nodes[1].address
    assert registry.nodeMining() == nodes[1].address
    tx = registry.setTreasury(nodes[2], sender=owner)
    ev = tx.events.filter(registry.TreasuryChanged)[0]
    assert ev.previousTreasury == treasury.address and ev.newTreasury == nodes[2].address
    with ape.reverts(registry.ZeroAddress):
        registry.setTreasury(ZERO, sender=owner)


def test_params_defaults(registry):
    assert tuple(registry.params()) == DEFAULT_PARAMS


def test_setParams_emitsAndApplies(registry, owner, nodes, join):
    new = (500 * CNX, 5000, 3 * QOS_ONE, 10, 20, 2, 1, 0, 16, 8)
    tx = registry.setParams(new, sender=owner)
    assert tuple(registry.params()) == new
    assert tuple(tx.events.filter(registry.ParamsChanged)[0].params) == new
    with ape.reverts(registry.StakeTooLow, stake=400 * CNX, minStake=500 * CNX):
        join(nodes[0], stake=400 * CNX, version=(2, 1, 0))


@pytest.mark.parametrize(
    "field,value,error,kwargs",
    [
        ("minStake", 0, "InvalidMinStake", {"minStake": 0}),
        ("slashBps", 10_001, "InvalidSlashBps", {"slashBps": 10_001}),
        ("qosWindow", 0, "InvalidQosWindow", {"qosWindow": 0}),
        ("kickQos", 10 * QOS_ONE + 1, "InvalidKickQos", {"kickQos": 10 * QOS_ONE + 1}),
    ],
)
def test_setParams_failsOnInvalid(registry, owner, field, value, error, kwargs):
    with ape.reverts(getattr(registry, error), **kwargs):
        set_params(registry, owner, **{field: value})


def test_setParams_failsIfMaxGroupsBelowExisting(registry, owner, nodes, join):
    join(nodes[0], gpu="A")
    join(nodes[1], gpu="B")
    with ape.reverts(registry.InvalidMaxGroups, maxGroups=1, existingGroups=2):
        set_params(registry, owner, maxGroups=1)


# ------------------------------------------------------------------ lock / release


def test_lock_makesBusyAndUnsettled(registry, nodes, join, market):
    a = nodes[0]
    join(a)
    tx = registry.lock(a, sender=market)
    assert registry.statusOf(a) == S.BUSY
    assert registry.nodeInfo(a).unsettled == 1
    assert tx.events.filter(registry.NodeStatusChanged)[0].status == S.BUSY
    assert list(registry.countsByStatus()) == [1, 0, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("state", [S.NONE, S.BUSY, S.PAUSED, S.QUIT])
def test_lock_failsIfNotAvailable(registry, nodes, join, market, state):
    a = nodes[0]
    if state != S.NONE:
        join(a)
    if state == S.BUSY:
        registry.lock(a, sender=market)
    elif state == S.PAUSED:
        registry.pause(sender=a)
    elif state == S.QUIT:
        registry.quit(sender=a)
    with ape.reverts(registry.NodeNotAvailable, node=a.address, status=state):
        registry.lock(a, sender=market)


def test_release_appliesQosEma(registry, nodes, join, market):
    a = nodes[0]
    join(a)
    q = 10 * QOS_ONE
    for score in [10, 6, 0, 6, 10, 0, 0]:
        tx = run_task(registry, market, a, score=score)
        q = ema(q, score)
        assert registry.qosOf(a) == q
        ev = tx.events.filter(registry.NodeReleased)[0]
        assert ev.qos == q and ev.taskScore == score and ev.status == S.AVAILABLE
    info = registry.nodeInfo(a)
    assert info.taskCount == 7 and info.unsettled == 0


def test_release_unsettledThenSettle(registry, nodes, join, market):
    a = nodes[0]
    join(a)
    run_task(registry, market, a, settled=False)
    run_task(registry, market, a, settled=False)
    assert registry.nodeInfo(a).unsettled == 2
    registry.settle(a, sender=market)
    tx = registry.settle(a, sender=market)
    assert tx.events.filter(registry.NodeSettled)[0].unsettled == 0
    with ape.reverts(registry.NoUnsettledTask, node=a.address):
        registry.settle(a, sender=market)


def test_release_failsIfNotBusy(registry, nodes, join, market):
    a = nodes[0]
    with ape.reverts(registry.NodeNotBusy, node=a.address, status=S.NONE):
        registry.release(a, 10, True, sender=market)
    join(a)
    with ape.reverts(registry.NodeNotBusy, node=a.address, status=S.AVAILABLE):
        registry.release(a, 10, True, sender=market)
    registry.pause(sender=a)
    with ape.reverts(registry.NodeNotBusy, node=a.address, status=S.PAUSED):
        registry.release(a, 10, True, sender=market)


def test_release_failsOnScoreAbove10(registry, nodes, join, market):
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    with ape.reverts(registry.InvalidTaskScore, score=11):
        registry.release(a, 11, True, sender=market)


def test_release_failsIfSettledTwice(registry, nodes, join, market):
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    registry.settle(a, sender=market)  # the market closed the task early
    with ape.reverts(registry.NoUnsettledTask, node=a.address):
        registry.release(a, 10, True, sender=market)


@settings(max_examples=10)
@given(scores=st.lists(st.sampled_from([0, 6, 10]), min_size=1, max_size=12))
def test_qos_matchesPythonModel(chain, registry, nodes, join, market, scores):
    with isolated(chain):
        a = nodes[0]
        join(a)
        q = 10 * QOS_ONE
        for s in scores:
            run_task(registry, market, a, score=s)
            q = ema(q, s)
        assert registry.qosOf(a) == q
        assert registry.weightOf(a) == (q + QOS_ONE // 2) // QOS_ONE


# ------------------------------------------------------------------ kick-out


def test_kickOut_afterMinTasksWithLowQos(registry, token, nodes, join, market):
    """Default parameters: from QoS 10, 46 timeouts (score 0) bring it under 4."""
    a = nodes[0]
    join(a)
    q = 10 * QOS_ONE
    before = token.balanceOf(a)
    for i in range(45):
        run_task(registry, market, a, score=0)
        q = ema(q, 0)
    assert q >= 4 * QOS_ONE and registry.statusOf(a) == S.AVAILABLE
    tx = run_task(registry, market, a, score=0)
    q = ema(q, 0)
    assert q < 4 * QOS_ONE
    assert tx.return_value is False
    assert registry.statusOf(a) == S.QUIT
    ev = tx.events.filter(registry.NodeKickedOut)[0]
    assert ev.qos == q and ev.taskCount == 46
    assert token.balanceOf(a) == before + MIN_STAKE  # stake returned
    assert registry.weightOf(a) == 0
    assert registry.previewSelect(Req().t(), 1, ZERO, ZERO) == ZERO


def test_kickOut_notBeforeMinTasks(registry, owner, nodes, join, market):
    set_params(registry, owner, qosWindow=1)  # QoS = the last score
    a = nodes[0]
    join(a)
    for _ in range(19):
        assert run_task(registry, market, a, score=0).return_value is True
    assert registry.qosOf(a) == 0 and registry.statusOf(a) == S.AVAILABLE
    tx = run_task(registry, market, a, score=0)
    assert registry.statusOf(a) == S.QUIT
    assert tx.events.filter(registry.NodeKickedOut)[0].taskCount == 20


def test_kickOut_keepsStakeWhileUnsettled(registry, owner, token, nodes, join, market):
    set_params(registry, owner, qosWindow=1, minTasksForKick=1)
    a = nodes[0]
    join(a)
    before = token.balanceOf(a)
    run_task(registry, market, a, score=0, settled=False)
    assert registry.statusOf(a) == S.QUIT
    assert token.balanceOf(a) == before
    registry.settle(a, sender=market)
    assert token.balanceOf(a) == before + MIN_STAKE


def test_kickOut_ofPendingPauseNode(registry, owner, nodes, join, market):
    set_params(registry, owner, qosWindow=1, minTasksForKick=1)
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    registry.pause(sender=a)
    registry.release(a, 0, True, sender=market)
    assert registry.statusOf(a) == S.QUIT
    assert list(registry.countsByStatus()) == [1, 0, 0, 0, 0, 0, 1]


# ------------------------------------------------------------------ slash


def test_slash_busyNode(registry, token, treasury, nodes, join, market):
    a = nodes[0]
    join(a, stake=1000 * CNX)
    registry.lock(a, sender=market)
    pool_before = token.balanceOf(market)
    treasury_before = token.balanceOf(treasury)
    tx = registry.slash(a, sender=market)
    assert tx.return_value == 500 * CNX
    assert token.balanceOf(market) == pool_before + 500 * CNX
    assert token.balanceOf(treasury) == treasury_before + 500 * CNX
    ev = tx.events.filter(registry.NodeSlashed)[0]
    assert ev.amount == 1000 * CNX and ev.toAuditPool == 500 * CNX and ev.toTreasury == 500 * CNX
    assert registry.statusOf(a) == S.QUIT
    info = registry.nodeInfo(a)
    assert info.stake == 0 and info.unsettled == 0 and info.weight == 0
    assert token.balanceOf(registry) == 0
    # The market still releases the node from the task it was running: no revert.
    assert registry.release(a, 0, True, sender=market).return_value is False
    assert list(registry.countsByStatus()) == [1, 0, 0, 0, 0, 0, 1]


def test_slash_partialReturnsRestWhenSettled(registry, owner, token, treasury, nodes, join, market):
    set_params(registry, owner, slashBps=2500)
    a = nodes[0]
    join(a, stake=1000 * CNX)
    run_task(registry, market, a, settled=False)  # task 1, open to audit
    registry.lock(a, sender=market)  # task 2, running
    node_before = token.balanceOf(a)
    tx = registry.slash(a, sender=market)  # for task 1
    assert tx.return_value == 125 * CNX
    assert token.balanceOf(treasury) >= 125 * CNX
    assert registry.nodeInfo(a).stake == 750 * CNX
    assert registry.statusOf(a) == S.QUIT
    assert token.balanceOf(a) == node_before  # task 2 still open
    tx = registry.release(a, 10, True, sender=market)
    assert token.balanceOf(a) == node_before + 750 * CNX
    assert tx.events.filter(registry.StakeReturned)[0].amount == 750 * CNX


def test_slash_availableNodeLeavesSelection(registry, owner, token, nodes, join, market):
    set_params(registry, owner, slashBps=5000)
    a = nodes[0]
    join(a)
    run_task(registry, market, a, settled=False)
    assert registry.statusOf(a) == S.AVAILABLE
    before = token.balanceOf(a)
    registry.slash(a, sender=market)
    assert registry.statusOf(a) == S.QUIT
    assert token.balanceOf(a) == before + MIN_STAKE // 2  # nothing open: the rest goes back
    assert registry.previewSelect(Req().t(), 7, ZERO, ZERO) == ZERO
    _, _, n, avail = registry.hardwareGroups()
    assert list(n) == [0] and list(avail) == [0]


def test_slash_pausedAndPendingNodes(registry, nodes, join, market):
    a, b, c = nodes[:3]
    for x in (a, b, c):
        join(x)
        run_task(registry, market, x, settled=False)
    registry.pause(sender=a)  # Paused
    registry.lock(b, sender=market)
    registry.pause(sender=b)  # PendingPause
    registry.lock(c, sender=market)
    registry.quit(sender=c)  # PendingQuit
    for x in (a, b, c):
        registry.slash(x, sender=market)
        assert registry.statusOf(x) == S.QUIT
    assert list(registry.countsByStatus()) == [3, 0, 0, 0, 0, 0, 3]


def test_slash_quitNodeAgain(registry, nodes, join, market):
    """A node already slashed (or quit) with another open task can be slashed for it: zero."""
    a = nodes[0]
    join(a)
    run_task(registry, market, a, settled=False)
    run_task(registry, market, a, settled=False)
    registry.slash(a, sender=market)
    tx = registry.slash(a, sender=market)
    assert tx.return_value == 0
    assert registry.nodeInfo(a).unsettled == 0


def test_slash_failsWithoutUnsettledTask(registry, nodes, join, market):
    a = nodes[0]
    join(a)
    with ape.reverts(registry.NoUnsettledTask, node=a.address):
        registry.slash(a, sender=market)


def test_slashedNode_canRejoinWithNewStake(registry, token, nodes, join, market):
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    registry.slash(a, sender=market)
    registry.release(a, 0, False, sender=market)
    join(a)
    assert registry.statusOf(a) == S.AVAILABLE
    assert registry.nodeInfo(a).stake == MIN_STAKE
    assert token.balanceOf(registry) == MIN_STAKE

