from crynux_common.enums import NodeStatus
from tests.registry.conftest import MIN_STAKE, Req, h


def test_join_lock_release(registry, nodes, join, market, token):
    a = nodes[0]
    tx = join(a, models=["base:sd15", "lora:x"])
    print("join gas", tx.gas_used)
    assert registry.statusOf(a) == NodeStatus.AVAILABLE
    tx = registry.lockRandom(Req(min_vram=8).t(), 123, "0x" + "00" * 20, "0x" + "00" * 20, sender=market)
    print("lockRandom gas", tx.gas_used)
    assert registry.statusOf(a) == NodeStatus.BUSY
    tx = registry.release(a, 10, True, sender=market)
    print("release gas", tx.gas_used)
    assert registry.statusOf(a) == NodeStatus.AVAILABLE
    info = registry.nodeInfo(a)
    print(info)
