"""The whole network end to end, with faults: real Anvil, relay and node processes, the SDK.

Tests of this module share one network and run in file order; each uses its own nodes'
GPU group or leaves the shared honest group idle when it ends.
"""
from __future__ import annotations

import time

import pytest

from crynux_common import scores
from crynux_common.enums import NodeStatus, Outcome, TaskStatus, TaskType
from relay_client.sdk import (
    ImageResult,
    InsufficientBalance,
    TaskAborted,
    TaskTimeout,
    TextResult,
    TransactionFailed,
)

from .conftest import CHEAT, CNX, E2E, HONEST, VRAM

PIN_HONEST = {"required_gpu": HONEST, "min_vram": VRAM}  # only the honest group's nodes
PIN_CHEAT = {"required_gpu": CHEAT, "min_vram": VRAM}
NOBODY_VRAM = 256  # more VRAM than any node declares (and a tier): the task queues


def _wait_status(e2e: E2E, task_id: int, statuses: set[TaskStatus], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = e2e.client.task(task_id)
        if info["status"] in statuses:
            return info
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} not in {statuses} after {timeout} s: {info['status'].name}\n{e2e.logs()}")


def _honest_idle(e2e: E2E, timeout: float = 60.0) -> None:
    """Waits until every honest node is Available again (the previous test's tasks done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(int(e2e.registry.nodeInfo(n.address).status) == NodeStatus.AVAILABLE
               for n in e2e.groups[HONEST] if n.proc.running()):
            return
        time.sleep(0.1)
    raise AssertionError("honest nodes still busy")


def test_imageAndTextTasks_succeedWithVerifiedResults(e2e: E2E) -> None:
    before = e2e.client.balance()
    img = e2e.client.generate_image(e2e.image(1, num_images=2), 4 * CNX, **PIN_HONEST,
                                    timeout=90)
    assert isinstance(img.result, ImageResult)
    assert len(img.result.images) == 2 and img.result.images[0].size == (64, 64)
    assert img.result.score == scores.image_score(img.result.files)
    assert [p for p in ("started", "committed", "delivered") if p in img.phase_times] == \
        ["started", "committed", "delivered"]
    txt = e2e.client.generate_text(e2e.text(2), 2 * CNX, **PIN_HONEST, timeout=90)
    assert isinstance(txt.result, TextResult)
    assert txt.result.score == scores.text_score(txt.result.raw)
    for rep in (img, txt):
        info = e2e.client.wait(rep.task_id, until="settled", timeout=30)
        assert info["status"] == TaskStatus.SUCCESS
        assert e2e.client.outcome(rep.task_id) == Outcome.SUCCESS
    assert e2e.client.balance() == before - 6 * CNX


def test_queuedTask_cancelled_refundedAndTyped(e2e: E2E) -> None:
    before = e2e.client.balance()
    rep = e2e.client.submit_image(e2e.image(50), 2 * CNX, min_vram=NOBODY_VRAM)
    assert e2e.client.task(rep.task_id)["status"] == TaskStatus.QUEUED
    assert e2e.client.estimate(3 * CNX, TaskType.IMAGE, 1).queue_position == 0
    assert e2e.client.estimate(2 * CNX, TaskType.IMAGE, 1).queue_position == 1  # ties: the older first
    e2e.client.cancel(rep.task_id)
    with pytest.raises(TaskAborted) as aborted:
        e2e.client.wait(rep, timeout=5)
    assert aborted.value.status == TaskStatus.CANCELLED and aborted.value.refunded == 2 * CNX
    assert e2e.client.balance() == before
    with pytest.raises(TransactionFailed) as failed:
        e2e.client.cancel(rep.task_id)
    assert failed.value.error == "WrongStatus"


def test_generate_queuedPastTimeout_cancelledAndRefunded(e2e: E2E) -> None:
    """No node can take the task: generate_* gives up after its timeout and gets the fee back
    instead of leaving it escrowed in the queue."""
    before = e2e.client.balance()
    with pytest.raises(TaskTimeout) as timed_out:
        e2e.client.generate_image(e2e.image(52), 2 * CNX, min_vram=NOBODY_VRAM, timeout=1)
    assert timed_out.value.cancelled and timed_out.value.status == TaskStatus.QUEUED
    assert e2e.client.task(timed_out.value.task_id)["status"] == TaskStatus.CANCELLED
    assert e2e.client.balance() == before


def test_applicationWithoutCnx_insufficientBalance(e2e: E2E) -> None:
    from eth_account import Account

    from relay_client import CrynuxClient

    poor = Account.create()
    e2e.fund(poor.address, CNX)
    with CrynuxClient(e2e.client.chain.w3.provider.endpoint_uri, e2e.client.chain.deployment, e2e.net.relay_url,
                      poor, progress=False) as client:
        with pytest.raises(InsufficientBalance) as err:
            client.submit_image(e2e.image(51), 2 * CNX)
    assert err.value.what == "CNX" and err.value.have == CNX and err.value.need == 2 * CNX


def test_alwaysAuditTask_threeHonestNodesAgree_executorAndAuditorsPaid(e2e: E2E) -> None:
    _honest_idle(e2e)
    rep = e2e.client.generate_image(e2e.image(3), 3 * CNX, **PIN_HONEST, always_audit=True, timeout=90)
    info = e2e.client.wait(rep, until="settled", timeout=120)
    assert info["status"] == TaskStatus.SUCCESS and info["drawn"]
    auditors = [a for a in info["auditors"] if int(a, 16)]
    assert len(auditors) == 2 and info["executor"] not in auditors
    paid = {e["args"]["node"] for e in e2e.client._task_logs("NodePaid", rep.task_id)}
    assert paid == {info["executor"], *auditors}


def test_relayKilledAndRestartedMidTask_taskStillCompletes(e2e: E2E) -> None:
    _honest_idle(e2e)
    rep = e2e.client.submit_image(e2e.image(4, size=128, steps=3), 3 * CNX, **PIN_HONEST)
    info = _wait_status(e2e, rep.task_id, {TaskStatus.STARTED, TaskStatus.COMMITTED})
    executor = e2e.net.node_by_address(info["executor"])
    fetched = f"task {rep.task_id} [executor]: arguments fetched"
    deadline = time.monotonic() + 30
    while fetched not in executor.proc.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    e2e.net.kill_relay()  # mid-task: the node computes and commits, then cannot deliver
    time.sleep(1.0)
    e2e.net.start_relay()
    e2e.client.wait(rep, timeout=60)
    result = e2e.client.fetch_results(rep.task_id, TaskType.IMAGE)
    assert isinstance(result, ImageResult) and result.images[0].size == (128, 128)
    assert e2e.client.wait(rep.task_id, until="settled", timeout=30)["status"] == TaskStatus.SUCCESS
    assert "relay unreachable" in executor.proc.log() or "retry" in executor.proc.log()


def test_moreTasksThanNodes_queuedTasksServedInValueOrder(e2e: E2E) -> None:
    _honest_idle(e2e)
    busy = [e2e.client.submit_image(e2e.image(10 + i, size=128, steps=8), 5 * CNX, **PIN_HONEST)
            for i in range(3)]
    fees = [1, 4, 2, 3]  # CNX, all 1-image tasks: value order 4, 3, 2, 1
    queued = [e2e.client.submit_image(e2e.image(20 + i), fee * CNX, **PIN_HONEST) for i, fee in enumerate(fees)]
    for rep in queued:
        assert e2e.client.task(rep.task_id)["status"] == TaskStatus.QUEUED, "the three nodes should be busy"
    est = e2e.client.estimate(5 * CNX // 2, TaskType.IMAGE, 1)
    assert est.queue_position == 2  # behind the 4 and 3 CNX tasks
    for rep in busy + queued:
        e2e.client.wait(rep, until="settled", timeout=120)
    starts = {rep.task_id: int(e2e.client.task(rep.task_id)["startTime"]) for rep in queued}
    blocks = {rep.task_id: e2e.client._task_logs("TaskStarted", rep.task_id)[0]["blockNumber"] for rep in queued}
    by_fee = [rep.task_id for _, rep in sorted(zip(fees, queued), key=lambda p: -p[0])]
    assert sorted(blocks, key=lambda t: (blocks[t], starts[t])) == by_fee


def test_cheatingExecutor_slashedOnAudit_creatorRefunded(e2e: E2E) -> None:
    # Two honest nodes of the CHEAT group, running but paused, and the cheater joined but not
    # running yet: the task can only start on the cheater. The honest nodes resume before the
    # cheater even starts (only nodes online before a commitment may audit it); the cheater
    # then commits and delivers, and the draw makes them its auditors.
    auditors = e2e.add_nodes(CHEAT, 2)
    for node in auditors:
        e2e.net.node_cli(node, "pause")
    (cheater,) = e2e.add_nodes(CHEAT, 1, start=False, behaviour="wrong_image")
    stake = int(e2e.registry.nodeInfo(cheater.address).stake)
    before = e2e.client.balance()
    rep = e2e.client.submit_image(e2e.image(30), 3 * CNX, **PIN_CHEAT, always_audit=True)
    assert e2e.client.task(rep.task_id)["executor"] == cheater.address
    for node in auditors:
        e2e.net.node_cli(node, "resume")
    e2e.net.start_node(cheater)
    e2e.net.wait_ready([cheater], timeout=180)
    with pytest.raises(TaskAborted) as info:
        e2e.client.wait(rep, until="settled", timeout=150)
    assert info.value.status == TaskStatus.REFUNDED and info.value.outcome == Outcome.EXECUTOR_SLASHED
    assert info.value.refunded >= 3 * CNX  # at least the fee; the auditors' escrow pays the auditors
    assert e2e.client.balance() == before - 9 * CNX + info.value.refunded
    slashed = e2e.client._task_logs("NodeSlashed", rep.task_id)
    assert [s["args"]["node"] for s in slashed] == [cheater.address]
    assert int(e2e.registry.nodeInfo(cheater.address).stake) < stake
    paid = {e["args"]["node"] for e in e2e.client._task_logs("NodePaid", rep.task_id)}
    assert paid == {n.address for n in auditors}


def test_nodeKilledMidTask_timesOutRefunded_nextTaskGoesToAnotherNode(e2e: E2E) -> None:
    _honest_idle(e2e)
    before = e2e.client.balance()
    rep = e2e.client.submit_image(e2e.image(40, size=128, steps=10), 3 * CNX, **PIN_HONEST)
    info = _wait_status(e2e, rep.task_id, {TaskStatus.STARTED})
    victim = e2e.net.node_by_address(info["executor"])
    victim.proc.kill()
    assert e2e.client.task(rep.task_id)["status"] == TaskStatus.STARTED, "killed after its commit: too slow"
    nxt = e2e.client.generate_image(e2e.image(41), 3 * CNX, **PIN_HONEST, timeout=90)
    assert nxt.executor is not None and nxt.executor != victim.address
    with pytest.raises(TaskAborted) as aborted:
        e2e.client.wait(rep, until="settled", timeout=90)  # the SDK calls timeout() after the deadline
    assert aborted.value.status == TaskStatus.REFUNDED and aborted.value.outcome == Outcome.NOT_COMMITTED
    assert aborted.value.refunded == 3 * CNX
    assert e2e.client.balance() == before - 3 * CNX  # only the next task was paid
