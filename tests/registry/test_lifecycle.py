"""Node states: pause, resume, quit, their pending forms while Busy, and the market hook."""
from __future__ import annotations

import ape
import pytest
from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector as selector

from crynux_common.enums import NodeStatus as S
from tests.registry.conftest import MIN_STAKE, hook_calls, recorder, run_task


def counts(registry) -> list[int]:
    return list(registry.countsByStatus())


# ------------------------------------------------------------------ pause


def test_pause_availableBecomesPaused(registry, nodes, join):
    a = nodes[0]
    join(a)
    tx = registry.pause(sender=a)
    assert registry.statusOf(a) == S.PAUSED
    assert registry.weightOf(a) == 0
    assert tx.events.filter(registry.NodeStatusChanged)[0].status == S.PAUSED
    assert counts(registry) == [1, 0, 0, 0, 1, 0, 0]
    _, _, n, avail = registry.hardwareGroups()
    assert list(n) == [1] and list(avail) == [0]


def test_pause_busyBecomesPendingPauseThenPausedOnRelease(registry, nodes, join, market):
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    registry.pause(sender=a)
    assert registry.statusOf(a) == S.PENDING_PAUSE
    assert registry.weightOf(a) == 10  # still online until the task ends
    assert counts(registry) == [1, 0, 0, 1, 0, 0, 0]
    tx = registry.release(a, 10, True, sender=market)
    assert tx.return_value is False
    assert registry.statusOf(a) == S.PAUSED
    ev = tx.events.filter(registry.NodeReleased)[0]
    assert ev.status == S.PAUSED and ev.taskScore == 10
    assert counts(registry) == [1, 0, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("state", [S.NONE, S.PAUSED, S.PENDING_PAUSE, S.PENDING_QUIT, S.QUIT])
def test_pause_failsInState(registry, nodes, join, market, state):
    a = nodes[0]
    _bring(registry, market, join, a, state)
    with ape.reverts(registry.CannotPause, node=a.address, status=state):
        registry.pause(sender=a)


# ------------------------------------------------------------------ resume


def test_resume_pausedBecomesAvailable(registry, nodes, join):
    a = nodes[0]
    join(a)
    registry.pause(sender=a)
    tx = registry.resume(sender=a)
    assert registry.statusOf(a) == S.AVAILABLE
    assert registry.weightOf(a) == 10
    assert tx.events.filter(registry.NodeStatusChanged)[0].status == S.AVAILABLE
    assert counts(registry) == [1, 1, 0, 0, 0, 0, 0]


def test_resume_pendingPauseBecomesBusy(registry, nodes, join, market):
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    registry.pause(sender=a)
    registry.resume(sender=a)
    assert registry.statusOf(a) == S.BUSY
    assert counts(registry) == [1, 0, 1, 0, 0, 0, 0]
    assert registry.release(a, 10, True, sender=market).return_value is True
    assert registry.statusOf(a) == S.AVAILABLE


def test_resume_failsIfVersionNoLongerAllowed(registry, owner, nodes, join):
    a = nodes[0]
    join(a, version=(1, 0, 0))
    registry.pause(sender=a)
    p = list(registry.params())
    p[6] = 1  # minMinor 1
    registry.setParams(p, sender=owner)
    with ape.reverts(registry.VersionNotAllowed, major=1, minor=0, patch=0, versionMajor=1, minMinor=1, minPatch=0):
        registry.resume(sender=a)
    registry.updateVersion([1, 1, 0], sender=a)
    registry.resume(sender=a)
    assert registry.statusOf(a) == S.AVAILABLE


@pytest.mark.parametrize("state", [S.NONE, S.AVAILABLE, S.BUSY, S.PENDING_QUIT, S.QUIT])
def test_resume_failsInState(registry, nodes, join, market, state):
    a = nodes[0]
    _bring(registry, market, join, a, state)
    with ape.reverts(registry.CannotResume, node=a.address, status=state):
        registry.resume(sender=a)


# ------------------------------------------------------------------ quit


def test_quit_availableReturnsStake(registry, token, nodes, join):
    a = nodes[0]
    join(a)
    before = token.balanceOf(a)
    tx = registry.quit(sender=a)
    assert registry.statusOf(a) == S.QUIT
    assert token.balanceOf(a) == before + MIN_STAKE
    assert token.balanceOf(registry) == 0
    assert tx.events.filter(registry.StakeReturned)[0].amount == MIN_STAKE
    assert registry.nodeInfo(a).stake == 0
    assert counts(registry) == [1, 0, 0, 0, 0, 0, 1]
    _, _, n, avail = registry.hardwareGroups()
    assert list(n) == [0] and list(avail) == [0]


def test_pauseThenQuit(registry, token, nodes, join):
    a = nodes[0]
    join(a)
    registry.pause(sender=a)
    before = token.balanceOf(a)
    registry.quit(sender=a)
    assert registry.statusOf(a) == S.QUIT
    assert token.balanceOf(a) == before + MIN_STAKE
    assert counts(registry) == [1, 0, 0, 0, 0, 0, 1]


def test_quitWhileBusy_pendingQuitThenQuitOnRelease(registry, token, nodes, join, market):
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    before = token.balanceOf(a)
    tx = registry.quit(sender=a)
    assert registry.statusOf(a) == S.PENDING_QUIT
    assert tx.events.filter(registry.NodeStatusChanged)[0].status == S.PENDING_QUIT
    assert token.balanceOf(a) == before
    assert counts(registry) == [1, 0, 0, 0, 0, 1, 0]
    tx = registry.release(a, 10, True, sender=market)
    assert tx.return_value is False
    assert registry.statusOf(a) == S.QUIT
    assert token.balanceOf(a) == before + MIN_STAKE
    assert tx.events.filter(registry.NodeReleased)[0].status == S.QUIT
    assert counts(registry) == [1, 0, 0, 0, 0, 0, 1]


def test_quitWhileBusy_unsettledKeepsStakeUntilSettle(registry, token, nodes, join, market):
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    registry.quit(sender=a)
    before = token.balanceOf(a)
    registry.release(a, 10, False, sender=market)  # drawn for audit: still open
    assert registry.statusOf(a) == S.QUIT
    assert token.balanceOf(a) == before
    tx = registry.settle(a, sender=market)
    assert token.balanceOf(a) == before + MIN_STAKE
    assert tx.events.filter(registry.NodeSettled)[0].unsettled == 0


def test_pauseWhileBusyThenQuit(registry, token, nodes, join, market):
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    registry.pause(sender=a)
    registry.quit(sender=a)
    assert registry.statusOf(a) == S.PENDING_QUIT
    assert counts(registry) == [1, 0, 0, 0, 0, 1, 0]
    before = token.balanceOf(a)
    registry.release(a, 6, True, sender=market)
    assert registry.statusOf(a) == S.QUIT
    assert token.balanceOf(a) == before + MIN_STAKE


@pytest.mark.parametrize("state", [S.NONE, S.PENDING_QUIT, S.QUIT])
def test_quit_failsInState(registry, nodes, join, market, state):
    a = nodes[0]
    _bring(registry, market, join, a, state)
    with ape.reverts(registry.CannotQuit, node=a.address, status=state):
        registry.quit(sender=a)


def test_countsByStatus_allStates(registry, nodes, join, market):
    for st, a in zip([S.AVAILABLE, S.BUSY, S.PENDING_PAUSE, S.PAUSED, S.PENDING_QUIT, S.QUIT], nodes):
        _bring(registry, market, join, a, st)
        assert registry.statusOf(a) == st
    assert counts(registry) == [6, 1, 1, 1, 1, 1, 1]


# ------------------------------------------------------------------ hooks


def test_join_and_resume_callMarketHook(registry, owner, nodes, join, chain):
    hook = recorder(chain, "0x" + "ab" * 20)
    registry.setMarket(hook, sender=owner)
    a = nodes[0]
    tx = join(a)
    call = selector("onNodeAvailable(address)") + encode(["address"], [a.address])
    assert hook_calls(tx, hook) == [call]
    tx = registry.pause(sender=a)
    assert hook_calls(tx, hook) == []
    tx = registry.resume(sender=a)
    assert hook_calls(tx, hook) == [call]


def test_nodeMiningHook_followsWeight(registry, owner, nodes, join, market, chain):
    mining = recorder(chain, "0x" + "cd" * 20)
    registry.setNodeMining(mining, sender=owner)
    a = nodes[0]

    def weight_calls(tx):
        return [
            int.from_bytes(c[36:68], "big")
            for c in hook_calls(tx, mining)
            if c[:4] == selector("updateWeight(address,uint256)") and c[16:36] == bytes.fromhex(a.address[2:])
        ]

    assert weight_calls(join(a)) == [10]
    assert weight_calls(registry.lock(a, sender=market)) == []  # Busy keeps its weight
    assert weight_calls(registry.release(a, 10, True, sender=market)) == []  # level unchanged
    assert weight_calls(registry.pause(sender=a)) == [0]
    assert weight_calls(registry.resume(sender=a)) == [10]
    # Scores of 0 bring QoS under 9.5 after a few tasks: the weight follows the level, once.
    changes = []
    for _ in range(4):
        changes += weight_calls(run_task(registry, market, a, score=0))
    assert changes == [9]
    assert registry.weightOf(a) == 9
    assert weight_calls(registry.quit(sender=a)) == [0]


# ------------------------------------------------------------------ helper


def _bring(registry, market, join, a, state):
    """Puts node `a` into `state` through the public functions."""
    if state == S.NONE:
        return
    join(a)
    if state == S.AVAILABLE:
        return
    if state == S.PAUSED:
        registry.pause(sender=a)
        return
    if state == S.QUIT:
        registry.quit(sender=a)
        return
    registry.lock(a, sender=market)
    if state == S.PENDING_PAUSE:
        registry.pause(sender=a)
    elif state == S.PENDING_QUIT:
        registry.quit(sender=a)


def test_nodeMiningHook_zeroOnSlashKickAndPendingEnds(registry, owner, nodes, join, market, chain):
    mining = recorder(chain, "0x" + "ce" * 20)
    registry.setNodeMining(mining, sender=owner)
    p = list(registry.params())
    p[3], p[4] = 1, 1  # minTasksForKick 1, qosWindow 1: a score of 0 kicks at once
    registry.setParams(p, sender=owner)
    a, b, c, d = nodes[:4]
    sig = selector("updateWeight(address,uint256)")

    def calls(tx, node):
        return [int.from_bytes(x[36:68], "big") for x in hook_calls(tx, mining)
                if x[:4] == sig and x[16:36] == bytes.fromhex(node.address[2:])]

    for x in (a, b, c, d):
        join(x)
    registry.lock(a, sender=market)
    assert calls(registry.slash(a, sender=market), a) == [0]  # slashed while Busy
    assert calls(registry.release(a, 10, False, sender=market), a) == []  # already 0
    registry.lock(b, sender=market)
    assert calls(registry.release(b, 0, True, sender=market), b) == [0]  # kicked out
    registry.lock(c, sender=market)
    registry.pause(sender=c)
    assert calls(registry.release(c, 10, True, sender=market), c) == [0]  # PendingPause -> Paused
    registry.lock(d, sender=market)
    registry.release(d, 10, False, sender=market)
    registry.pause(sender=d)
    assert calls(registry.slash(d, sender=market), d) == []  # Paused: weight was 0 already
