"""Task value, the value-ordered queue, eligibility classes, eviction and cancel."""

from __future__ import annotations

import ape
import pytest

from crynux_common.enums import TaskStatus, TaskType
from tests.conftest import CNX
from tests.market.conftest import Request, h, image_score

pytestmark = pytest.mark.usefixtures("nodes")


def _started(tx, market):
    return [(e.taskId, e.executor) for e in tx.events.filter(market.TaskStarted)]


def test_estimatedTime_and_taskValue(market):
    assert market.estimatedTime(TaskType.IMAGE, 1) == 50
    assert market.estimatedTime(TaskType.IMAGE, 2) == 70
    assert market.estimatedTime(TaskType.TEXT, 0) == 40
    assert market.taskValue(10 * CNX, TaskType.IMAGE, 1) == 2 * CNX // 10  # 0.2 CNX/s
    assert market.taskValue(15 * CNX, TaskType.IMAGE, 2) == 15 * CNX // 70  # 0.214 CNX/s


def test_seedPricingExample_twoImagesFor15ServedBefore1For10(helpers, market, nodes, creators):
    """Seed: 10 CNX for 1 image = 0.2 CNX/s; 15 CNX for 2 images = 0.214 CNX/s: served first."""
    one, tx1 = helpers.create(creators[0], num_images=1, fee=10 * CNX)
    two, tx2 = helpers.create(creators[1], num_images=2, fee=15 * CNX)
    assert tx1.events.filter(market.TaskCreated)[0].value == 2 * CNX // 10
    assert tx2.events.filter(market.TaskQueued)[0].value == 15 * CNX // 70
    assert market.queueSize() == 2
    tx = helpers.join(nodes[0])
    assert _started(tx, market) == [(two, nodes[0].address)]
    helpers.commit(two, nodes[0], image_score(2, 1))
    tx = helpers.deliver(two)
    assert _started(tx, market) == [(one, nodes[0].address)]
    assert market.queueSize() == 0


def test_queue_equalValues_oldestFirst(helpers, market, nodes, creators):
    ids = [helpers.create(creators[i % 3], fee=10 * CNX)[0] for i in range(3)]
    tx = helpers.join(nodes[0])
    assert _started(tx, market) == [(ids[0], nodes[0].address)]


def test_queue_closeValuesWithinBucket_oldestFirst(helpers, market, nodes, creators):
    """Values closer than 2^-17 relative share a bucket: served oldest first."""
    a, _ = helpers.create(creators[0], fee=10 * CNX)
    b, _ = helpers.create(creators[0], fee=10 * CNX + 10**12)  # +1e-7 relative
    c, _ = helpers.create(creators[0], fee=10 * CNX + 10**15)  # +1e-4 relative: a higher bucket
    tx = helpers.join(nodes[0])
    assert _started(tx, market) == [(c, nodes[0].address)]
    tx = helpers.join(nodes[1])
    assert _started(tx, market) == [(a, nodes[1].address)]
    tx = helpers.join(nodes[2])
    assert _started(tx, market) == [(b, nodes[2].address)]


def _paused_node(helpers, registry, node, gpu: str, vram: int) -> None:
    """A registered but paused node: a task requiring its hardware may queue."""
    helpers.join(node, gpu=gpu, vram=vram)
    registry.pause(sender=node)


def test_queue_nodePullsOnlyWhatItIsEligibleFor(helpers, market, registry, nodes, creators):
    _paused_node(helpers, registry, nodes[5], "A100", 80)
    big, _ = helpers.create(creators[0], fee=50 * CNX, min_vram=48)
    a100, _ = helpers.create(creators[0], fee=40 * CNX, min_vram=80, required_gpu=h("A100"))
    small, _ = helpers.create(creators[0], fee=10 * CNX, min_vram=8)
    tx = helpers.join(nodes[0], gpu="RTX 4090", vram=24)
    assert _started(tx, market) == [(small, nodes[0].address)]
    tx = helpers.join(nodes[1], gpu="H100", vram=80)  # 80 GB but not an A100
    assert _started(tx, market) == [(big, nodes[1].address)]
    tx = helpers.join(nodes[2], gpu="A100", vram=80)
    assert _started(tx, market) == [(a100, nodes[2].address)]
    assert market.queueSize() == 0


def test_queue_requiredGpuNeedsExactVram(helpers, market, registry, nodes, creators):
    _paused_node(helpers, registry, nodes[5], "A100", 40)
    t, _ = helpers.create(creators[0], min_vram=40, required_gpu=h("A100"))
    tx = helpers.join(nodes[0], gpu="A100", vram=80)
    assert _started(tx, market) == []
    tx = helpers.join(nodes[1], gpu="A100", vram=40)
    assert _started(tx, market) == [(t, nodes[1].address)]


def test_createTask_startsAtOnceOnEligibleNode(helpers, market, nodes, creators):
    helpers.join(nodes[0], gpu="RTX 3060", vram=12)
    t1, tx = helpers.create(creators[0], min_vram=16)
    assert helpers.task(t1).status == TaskStatus.QUEUED
    helpers.join(nodes[1], gpu="RTX 4090", vram=24)
    assert helpers.task(t1).executor == nodes[1].address
    t2, tx = helpers.create(creators[0], min_vram=8)
    assert _started(tx, market) == [(t2, nodes[0].address)]


def test_queueFull_evictsLowestValue_refundedInSameTx(helpers, market, creators, token):
    helpers.set_params(maxQueueSize=3)
    low, _ = helpers.create(creators[0], fee=10 * CNX)
    mid, _ = helpers.create(creators[1], fee=20 * CNX, always_audit=True)
    helpers.create(creators[1], fee=30 * CNX)
    before = token.balanceOf(creators[0])
    new, tx = helpers.create(creators[2], fee=15 * CNX)
    (ev,) = tx.events.filter(market.TaskEvicted)
    assert ev.taskId == low and ev.byTaskId == new
    (ref,) = tx.events.filter(market.TaskRefunded)
    assert ref.taskId == low and ref.creator == creators[0].address and ref.amount == 10 * CNX
    assert token.balanceOf(creators[0]) == before + 10 * CNX
    assert helpers.task(low).status == TaskStatus.EVICTED
    assert market.queueSize() == 3
    # a value that does not beat the lowest (now 15 CNX / 50 s) is refused
    with ape.reverts(
        market.QueueFull, maxQueueSize=3, lowestValue=15 * CNX // 50, value=15 * CNX // 50
    ):
        helpers.create(creators[2], fee=15 * CNX)
    # the evicted task of an alwaysAudit creator gets its three fees back
    before = token.balanceOf(creators[1])
    helpers.create(creators[2], fee=100 * CNX)
    helpers.create(creators[2], fee=100 * CNX)
    assert helpers.task(mid).status == TaskStatus.EVICTED
    assert token.balanceOf(creators[1]) == before + 60 * CNX


def test_queueFull_evictsNewestOfEqualLowest(helpers, market, creators):
    helpers.set_params(maxQueueSize=2)
    older, _ = helpers.create(creators[0], fee=10 * CNX)
    newer, _ = helpers.create(creators[0], fee=10 * CNX)
    _, tx = helpers.create(creators[0], fee=11 * CNX)
    assert tx.events.filter(market.TaskEvicted)[0].taskId == newer
    assert helpers.task(older).status == TaskStatus.QUEUED


def test_queue_requiredGpuNobodyHas_refusedNotQueued(helpers, market, creators):
    with ape.reverts(market.NoNodeForGpu, gpu=h("A100"), vram=80):
        helpers.create(creators[0], min_vram=80, required_gpu=h("A100"))
    assert market.queueSize() == 0


def test_queue_minVramWithoutGpu_roundedUpToATier(helpers, market, creators):
    t, tx = helpers.create(creators[0], min_vram=13)
    assert tx.events.filter(market.TaskCreated)[0].minVram == 16 and helpers.task(t).minVram == 16
    with ape.reverts(market.MinVramTooHigh, minVram=257, maxMinVram=256):
        helpers.create(creators[0], min_vram=257)


def test_queue_classLimit(helpers, market, creators):
    helpers.set_params(maxQueueClasses=2)
    helpers.create(creators[0], min_vram=8)
    helpers.create(creators[0], min_vram=16)
    helpers.create(creators[0], min_vram=16)  # an existing class
    with ape.reverts(market.TooManyQueueClasses, maxQueueClasses=2):
        helpers.create(creators[0], min_vram=24)


def test_cancel_queuedTask_fullRefund(helpers, market, creators, token, nodes):
    before = token.balanceOf(creators[0])
    t, _ = helpers.create(creators[0], always_audit=True)
    assert token.balanceOf(creators[0]) == before - 30 * CNX
    with ape.reverts(market.NotCreator, taskId=t, caller=creators[1].address):
        market.cancel(t, sender=creators[1])
    tx = market.cancel(t, sender=creators[0])
    assert len(tx.events.filter(market.TaskCancelled)) == 1
    assert token.balanceOf(creators[0]) == before
    assert helpers.task(t).status == TaskStatus.CANCELLED
    assert market.queueSize() == 0
    with ape.reverts(market.WrongStatus, taskId=t, status=TaskStatus.CANCELLED):
        market.cancel(t, sender=creators[0])
    # a cancelled task is never pulled
    tx = helpers.join(nodes[0])
    assert _started(tx, market) == []


def test_cancel_failsOnceStarted(helpers, market, creators, nodes):
    helpers.join(nodes[0])
    t, _ = helpers.create(creators[0])
    with ape.reverts(market.WrongStatus, taskId=t, status=TaskStatus.STARTED):
        market.cancel(t, sender=creators[0])


def test_queuePosition_countsTasksServedBefore(helpers, market, creators):
    helpers.create(creators[0], fee=10 * CNX)
    helpers.create(creators[0], fee=20 * CNX, min_vram=16)
    helpers.create(creators[0], fee=30 * CNX)
    assert market.queuePosition(market.taskValue(40 * CNX, TaskType.IMAGE, 1)) == 0
    assert market.queuePosition(market.taskValue(20 * CNX, TaskType.IMAGE, 1)) == 2  # ties go after
    assert market.queuePosition(market.taskValue(15 * CNX, TaskType.IMAGE, 1)) == 2
    assert market.queuePosition(0) == 3


def test_createTask_validation(helpers, market, creators):
    c = creators[0]
    with ape.reverts(market.InvalidNumImages, taskType=TaskType.IMAGE, numImages=0):
        market.createTask(Request(num_images=0).t(), sender=c)
    with ape.reverts(market.InvalidNumImages, taskType=TaskType.IMAGE, numImages=11):
        market.createTask(Request(num_images=11).t(), sender=c)
    with ape.reverts(market.InvalidNumImages, taskType=TaskType.TEXT, numImages=1):
        market.createTask(Request(task_type=TaskType.TEXT, num_images=1).t(), sender=c)
    with ape.reverts(market.ZeroFee):
        market.createTask(Request(fee=0).t(), sender=c)
    with ape.reverts(market.FeeTooLarge, fee=2**80, maxFee=2**80 - 1):
        market.createTask(Request(fee=2**80).t(), sender=c)
    with ape.reverts(market.NoModels):
        market.createTask(Request(model_ids=()).t(), sender=c)


def test_createTask_sequentialIds_andEvent(helpers, market, registry, nodes, creators):
    _paused_node(helpers, registry, nodes[5], "L4", 16)
    req = Request(
        task_type=TaskType.TEXT, num_images=0, fee=4 * CNX, min_vram=16, required_gpu=h("L4")
    )
    t1, tx = helpers.create(creators[0], req)
    t2, _ = helpers.create(creators[0])
    assert (t1, t2) == (1, 2)
    (e,) = tx.events.filter(market.TaskCreated)
    assert e.creator == creators[0].address and e.taskType == TaskType.TEXT
    assert e.fee == 4 * CNX and e.value == 4 * CNX // 40 and e.minVram == 16
    assert e.requiredGpu == h("L4") and list(e.modelIds) == [h("base:sd15")]
    info = helpers.task(t1)
    assert info.taskType == TaskType.TEXT and info.requiredGpu == h("L4") and info.minVram == 16
    assert info.status == TaskStatus.QUEUED and info.value == 4 * CNX // 40


def test_queue_outdatedClientDoesNotPull(helpers, market, registry, nodes, creators, owner):
    """Governance raised the client version while the node worked: freed, it takes nothing."""
    helpers.set_params(auditRateBps=0)
    helpers.join(nodes[0])
    t1, _ = helpers.create(creators[0])
    t2, _ = helpers.create(creators[0])
    assert helpers.task(t2).status == TaskStatus.QUEUED
    p = dict(registry.params().items())
    p["minMinor"] = 1  # nodes now need client 1.1.0 or later
    registry.setParams(p, sender=owner)
    helpers.commit(t1, nodes[0], image_score(1, 1))
    tx = helpers.deliver(t1)
    assert not tx.events.filter(market.TaskStarted)
    assert helpers.task(t2).status == TaskStatus.QUEUED
