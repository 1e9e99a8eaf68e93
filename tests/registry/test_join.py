"""Joining, permit joining, rejoining, model and version updates, and every revert on the way."""
from __future__ import annotations

import ape
import pytest
from eth_account import Account
from crynux_common.permit import sign_permit

from crynux_common.enums import NodeStatus
from tests.conftest import CNX
from tests.registry.conftest import MIN_STAKE, QOS_ONE, VERSION, ZERO, h, run_task

STAKE_MAX = 2**96 - 1


def test_join_makesNodeAvailable(registry, token, nodes, join):
    a = nodes[0]
    before = token.balanceOf(a)
    tx = join(a, gpu="RTX 4090", vram=24, models=["base:sd15", "lora:pixel"], stake=500 * CNX)
    assert token.balanceOf(a) == before - 500 * CNX
    assert token.balanceOf(registry) == 500 * CNX
    info = registry.nodeInfo(a)
    assert info.status == NodeStatus.AVAILABLE
    assert info.stake == 500 * CNX
    assert info.qos == 10 * QOS_ONE
    assert info.weight == 10
    assert bytes(info.gpu) == h("RTX 4090")
    assert info.vram == 24
    assert (info.major, info.minor, info.patch) == VERSION
    assert info.taskCount == 0 and info.unsettled == 0
    assert [bytes(m) for m in info.models] == [h("base:sd15"), h("lora:pixel")]
    assert registry.hasModel(a, h("base:sd15"))
    assert registry.hardware(a) == (h("RTX 4090"), 24)
    ev = tx.events.filter(registry.NodeJoined)[0]
    assert ev.node == a.address and ev.stake == 500 * CNX and ev.gpuName == "RTX 4090"
    assert bytes(ev.gpu) == h("RTX 4090") and ev.vram == 24 and list(ev.version) == list(VERSION)
    assert [bytes(m) for m in ev.models] == [h("base:sd15"), h("lora:pixel")]
    grp = tx.events.filter(registry.HardwareGroupCreated)[0]
    assert grp.groupId == 1 and grp.gpuName == "RTX 4090" and grp.vram == 24
    assert registry.totalNodes() == 1
    assert list(registry.countsByStatus()) == [1, 1, 0, 0, 0, 0, 0]


def test_join_sameHardwareSharesGroup(registry, nodes, join):
    join(nodes[0], gpu="RTX 4090", vram=24)
    tx = join(nodes[1], gpu="RTX 4090", vram=24)
    assert not tx.events.filter(registry.HardwareGroupCreated)
    join(nodes[2], gpu="RTX 4090", vram=48)
    gpus, vrams, counts, available = registry.hardwareGroups()
    assert [bytes(g) for g in gpus] == [h("RTX 4090"), h("RTX 4090")]
    assert list(vrams) == [24, 48]
    assert list(counts) == [2, 1]
    assert list(available) == [2, 1]


def test_join_failsIfStakeTooLow(registry, nodes, join):
    with ape.reverts(registry.StakeTooLow, stake=MIN_STAKE - 1, minStake=MIN_STAKE):
        join(nodes[0], stake=MIN_STAKE - 1)


def test_join_failsIfStakeTooHigh(registry, nodes, join):
    with ape.reverts(registry.StakeTooHigh, stake=STAKE_MAX + 1, maxStake=STAKE_MAX):
        join(nodes[0], stake=STAKE_MAX + 1)


def test_join_failsWithoutAllowance(registry, token, nodes, join):
    a = nodes[0]
    token.approve(registry, MIN_STAKE - 1, sender=a)
    with ape.reverts(token.ERC20InsufficientAllowance):
        join(a)
    assert registry.statusOf(a) == NodeStatus.NONE


def test_join_failsIfGpuNameEmpty(registry, nodes, join):
    with ape.reverts(registry.EmptyGpuName):
        join(nodes[0], gpu="")


def test_join_failsIfVramZero(registry, nodes, join):
    with ape.reverts(registry.InvalidVram, vram=0):
        join(nodes[0], vram=0)


@pytest.mark.parametrize(
    "version,ok",
    [
        ((2, 3, 4), True),
        ((2, 3, 9), True),
        ((2, 4, 0), True),
        ((2, 3, 3), False),
        ((2, 2, 99), False),
        ((1, 9, 9), False),
        ((3, 3, 4), False),
    ],
)
def test_join_versionRule(registry, owner, nodes, join, version, ok):
    p = list(registry.params())
    p[5:8] = [2, 3, 4]  # versionMajor, minMinor, minPatch
    registry.setParams(p, sender=owner)
    if ok:
        join(nodes[0], version=version)
        assert registry.statusOf(nodes[0]) == NodeStatus.AVAILABLE
    else:
        with ape.reverts(
            registry.VersionNotAllowed,
            major=version[0],
            minor=version[1],
            patch=version[2],
            versionMajor=2,
            minMinor=3,
            minPatch=4,
        ):
            join(nodes[0], version=version)


def test_join_failsIfTooManyModels(registry, owner, nodes, join):
    p = list(registry.params())
    p[9] = 2  # maxModels
    registry.setParams(p, sender=owner)
    with ape.reverts(registry.TooManyModels, count=3, maxModels=2):
        join(nodes[0], models=["a", "b", "c"])


def test_join_failsIfModelDuplicated(registry, nodes, join):
    with ape.reverts(registry.DuplicateModel, model=h("base:x")):
        join(nodes[0], models=["base:x", "lora:y", "base:x"])


def test_join_failsIfModelZero(registry, nodes):
    with ape.reverts(registry.ZeroModel):
        registry.join(MIN_STAKE, "RTX 4090", 24, list(VERSION), [b"\x00" * 32], sender=nodes[0])


def test_join_failsIfAlreadyJoined(registry, nodes, join, market):
    a = nodes[0]
    join(a)
    with ape.reverts(registry.AlreadyJoined, node=a.address, status=NodeStatus.AVAILABLE):
        join(a)
    registry.lock(a, sender=market)
    with ape.reverts(registry.AlreadyJoined, node=a.address, status=NodeStatus.BUSY):
        join(a)
    registry.pause(sender=a)
    with ape.reverts(registry.AlreadyJoined, node=a.address, status=NodeStatus.PENDING_PAUSE):
        join(a)


def test_join_failsIfTooManyHardwareGroups(registry, owner, nodes, join):
    p = list(registry.params())
    p[8] = 2  # maxGroups
    registry.setParams(p, sender=owner)
    join(nodes[0], gpu="A", vram=8)
    join(nodes[1], gpu="B", vram=8)
    join(nodes[2], gpu="A", vram=8)  # existing group: fine
    with ape.reverts(registry.TooManyHardwareGroups, maxGroups=2):
        join(nodes[3], gpu="A", vram=16)


def test_rejoinAfterQuit_resetsHardwareAndModels_keepsQosOfTheAddress(registry, token, nodes, join, market):
    a = nodes[0]
    join(a, gpu="RTX 3090", vram=24, models=["base:sd15", "lora:a"])
    run_task(registry, market, a, score=6)
    qos_before = registry.qosOf(a)
    assert qos_before < 10 * QOS_ONE
    registry.quit(sender=a)
    assert registry.statusOf(a) == NodeStatus.QUIT
    before = token.balanceOf(a)
    tx = join(a, gpu="RTX 4090", vram=24, models=["base:sdxl"], stake=600 * CNX)
    assert token.balanceOf(a) == before - 600 * CNX
    info = registry.nodeInfo(a)
    assert info.status == NodeStatus.AVAILABLE
    # QoS follows the address: a kick-out cannot be washed away by quitting and rejoining.
    assert info.qos == qos_before and info.taskCount == 1
    assert bytes(info.gpu) == h("RTX 4090")
    assert [bytes(m) for m in info.models] == [h("base:sdxl")]
    assert not registry.hasModel(a, h("base:sd15"))
    assert registry.totalNodes() == 1
    assert list(registry.countsByStatus()) == [1, 1, 0, 0, 0, 0, 0]
    assert tx.events.filter(registry.NodeJoined)
    # The old group keeps no node, the new one has it.
    _, _, counts, available = registry.hardwareGroups()
    assert list(counts) == [0, 1] and list(available) == [0, 1]


def test_rejoin_failsWithUnsettledTasks(registry, token, nodes, join, market):
    """Withdrawal attempted with an unsettled task: quit keeps the stake, rejoin is refused,
    the last settle returns the stake."""
    a = nodes[0]
    join(a)
    registry.lock(a, sender=market)
    registry.release(a, 10, False, sender=market)  # executed, still open to audit
    before = token.balanceOf(a)
    tx = registry.quit(sender=a)
    assert registry.statusOf(a) == NodeStatus.QUIT
    assert token.balanceOf(a) == before  # stake held while the task can still be audited
    assert not tx.events.filter(registry.StakeReturned)
    assert registry.nodeInfo(a).stake == MIN_STAKE
    with ape.reverts(registry.UnsettledTasks, node=a.address, unsettled=1):
        join(a)
    tx = registry.settle(a, sender=market)
    assert token.balanceOf(a) == before + MIN_STAKE
    assert tx.events.filter(registry.StakeReturned)[0].amount == MIN_STAKE
    join(a)
    assert registry.statusOf(a) == NodeStatus.AVAILABLE


# ------------------------------------------------------------------ permit


def _permit(token, key: str, spender: str, value: int, deadline: int):
    holder = Account.from_key(key)
    return sign_permit(
        holder, token=token.address, chain_id=ape.chain.chain_id, spender=str(spender),
        value=value, nonce=token.nonces(holder.address), deadline=deadline,
    )


@pytest.fixture
def permit_node(accounts, fund):
    return fund(accounts.generate_test_account())


def test_joinWithPermit_oneTransaction(registry, token, permit_node):
    a = permit_node
    assert token.allowance(a, registry) == 0
    deadline = ape.chain.pending_timestamp + 3600
    v, r, s = _permit(token, a.private_key, registry.address, MIN_STAKE, deadline)
    tx = registry.joinWithPermit(
        MIN_STAKE, "RTX 4090", 24, list(VERSION), [h("base:sd15")], deadline, v, r, s, sender=a
    )
    assert registry.statusOf(a) == NodeStatus.AVAILABLE
    assert token.balanceOf(registry) == MIN_STAKE
    assert token.allowance(a, registry) == 0
    assert tx.events.filter(registry.NodeJoined)


def test_joinWithPermit_survivesFrontRunPermit(registry, token, permit_node, bob):
    """Someone submits the permit first: the join still goes through on the allowance."""
    a = permit_node
    deadline = ape.chain.pending_timestamp + 3600
    v, r, s = _permit(token, a.private_key, registry.address, MIN_STAKE, deadline)
    token.permit(a, registry, MIN_STAKE, deadline, v, r, s, sender=bob)
    registry.joinWithPermit(MIN_STAKE, "RTX 4090", 24, list(VERSION), [], deadline, v, r, s, sender=a)
    assert registry.statusOf(a) == NodeStatus.AVAILABLE


def test_joinWithPermit_failsWithBadPermit(registry, token, permit_node):
    a = permit_node
    deadline = ape.chain.pending_timestamp + 3600
    v, r, s = _permit(token, a.private_key, registry.address, MIN_STAKE - 1, deadline)  # signed too little
    with ape.reverts(token.ERC20InsufficientAllowance, spender=registry.address, allowance=0, needed=MIN_STAKE):
        registry.joinWithPermit(MIN_STAKE, "RTX 4090", 24, list(VERSION), [], deadline, v, r, s, sender=a)


# ------------------------------------------------------------------ models and version


def test_updateModels_addsAndRemoves(registry, nodes, join):
    a = nodes[0]
    join(a, models=["m1", "m2", "m3"])
    tx = registry.updateModels([h("m4"), h("m1")], [h("m1"), h("m2")], sender=a)
    models = {bytes(m) for m in registry.nodeInfo(a).models}
    assert models == {h("m1"), h("m3"), h("m4")}
    for m, held in [("m1", True), ("m2", False), ("m3", True), ("m4", True)]:
        assert registry.hasModel(a, h(m)) == held
    ev = tx.events.filter(registry.ModelsUpdated)[0]
    assert [bytes(x) for x in ev.added] == [h("m4"), h("m1")]
    assert [bytes(x) for x in ev.dropped] == [h("m1"), h("m2")]
    registry.updateModels([], [h("m1"), h("m3"), h("m4")], sender=a)
    assert list(registry.nodeInfo(a).models) == []


def test_updateModels_failsIfNotHeld(registry, nodes, join):
    join(nodes[0], models=["m1"])
    with ape.reverts(registry.ModelNotHeld, model=h("m2")):
        registry.updateModels([], [h("m2")], sender=nodes[0])


def test_updateModels_failsIfDuplicate(registry, nodes, join):
    join(nodes[0], models=["m1"])
    with ape.reverts(registry.DuplicateModel, model=h("m1")):
        registry.updateModels([h("m1")], [], sender=nodes[0])


def test_updateModels_failsIfTooMany(registry, owner, nodes, join):
    p = list(registry.params())
    p[9] = 2
    registry.setParams(p, sender=owner)
    join(nodes[0], models=["m1", "m2"])
    with ape.reverts(registry.TooManyModels, count=3, maxModels=2):
        registry.updateModels([h("m3")], [], sender=nodes[0])
    registry.updateModels([h("m3")], [h("m1")], sender=nodes[0])  # remove first, then add
    assert registry.hasModel(nodes[0], h("m3"))


def test_updateModels_failsIfNotJoined(registry, nodes, join):
    a = nodes[0]
    with ape.reverts(registry.NodeNotActive, node=a.address, status=NodeStatus.NONE):
        registry.updateModels([h("m1")], [], sender=a)
    join(a)
    registry.quit(sender=a)
    with ape.reverts(registry.NodeNotActive, node=a.address, status=NodeStatus.QUIT):
        registry.updateModels([h("m1")], [], sender=a)


def test_updateVersion(registry, owner, nodes, join):
    a = nodes[0]
    join(a, version=(1, 0, 0))
    p = list(registry.params())
    p[6] = 2  # minMinor
    registry.setParams(p, sender=owner)
    with ape.reverts(registry.VersionNotAllowed, major=1, minor=1, patch=0, versionMajor=1, minMinor=2, minPatch=0):
        registry.updateVersion([1, 1, 0], sender=a)
    tx = registry.updateVersion([1, 2, 5], sender=a)
    info = registry.nodeInfo(a)
    assert (info.major, info.minor, info.patch) == (1, 2, 5)
    ev = tx.events.filter(registry.VersionUpdated)[0]
    assert (ev.major, ev.minor, ev.patch) == (1, 2, 5)


def test_updateVersion_failsIfNotJoined(registry, nodes):
    with ape.reverts(registry.NodeNotActive, node=nodes[0].address, status=NodeStatus.NONE):
        registry.updateVersion([1, 0, 0], sender=nodes[0])


def test_constructor_failsOnZeroAddress(project, owner, token, treasury):
    with ape.reverts(project.NodeRegistry.ZeroAddress):
        owner.deploy(project.NodeRegistry, ZERO, owner, treasury)
    with ape.reverts(project.NodeRegistry.ZeroAddress):
        owner.deploy(project.NodeRegistry, token, ZERO, treasury)
    with ape.reverts(project.NodeRegistry.ZeroAddress):
        owner.deploy(project.NodeRegistry, token, owner, ZERO)

