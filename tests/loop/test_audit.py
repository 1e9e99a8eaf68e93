"""Three (then four) node processes with every task audited (auditRateBps = 10000).

Honest nodes agree and the audit settles; invalid arguments give the error score on all
three; a node killed right after its commit transaction is mined still delivers and
discloses after a restart; a node with the test-only cheating behaviour is slashed.
"""
from __future__ import annotations

import pytest

from crynux_common import scores
from crynux_common.enums import NodeStatus, Outcome, TaskStatus
from crynux_common.schemas import TaskType
from node_client.journal import Stage

from .harness import CNX, Network, NodeProc, image_args, wait_for

GPU = "LOOP-AUDIT"
TIMEOUT = 180  # generous: CI machines are small and busy


@pytest.fixture(scope="module")
def market_params() -> dict[str, int]:
    return {"auditRateBps": 10_000}


@pytest.fixture(scope="module")
def trio(net: Network) -> list[NodeProc]:
    nodes = [net.new_node(name, GPU) for name in ("a", "b", "c")]
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_ready()
    return nodes


def _status(net: Network, node: NodeProc) -> NodeStatus:
    return NodeStatus(int(net.registry.statusOf(node.address)))


def _parties(net: Network, task_id: int) -> list[str]:
    t = net.task(task_id)
    return [t.executor, *t.auditors]


def _disclosed(net: Network, task_id: int) -> dict[str, bytes]:
    return {e.node: bytes(e.score) for e in net.events("ScoreDisclosed", task_id)}


def _wait_journals_done(nodes: list[NodeProc], task_id: int) -> None:
    def done() -> bool:
        return all((e := n.entry(task_id)) is not None and e.stage == Stage.DONE for n in nodes)

    wait_for(done, TIMEOUT, f"every journal to close task {task_id}", nodes)


def test_audit_threeHonestNodes_agreeAndSettle(net: Network, trio: list[NodeProc]) -> None:
    task_id = net.create_task(image_args(101), GPU)
    assert net.wait_final(task_id, TIMEOUT, trio) == TaskStatus.SUCCESS
    t = net.task(task_id)
    assert t.drawn and t.delivered
    parties = _parties(net, task_id)
    assert sorted(parties) == sorted(n.address for n in trio)
    assert [int(e.outcome) for e in net.events("TaskSettled", task_id)] == [Outcome.SUCCESS]
    assert net.events("NodeSlashed", task_id) == []
    disclosed = _disclosed(net, task_id)
    assert set(disclosed) == set(parties)
    first = disclosed[t.executor]
    assert len(first) == 8 and all(scores.scores_match(first, s, TaskType.IMAGE) for s in disclosed.values())
    paid = {e.node: int(e.amount) for e in net.events("NodePaid", task_id)}
    assert paid[t.executor] == 9 * CNX
    _wait_journals_done(trio, task_id)
    for n in trio:
        entry = n.entry(task_id)
        assert entry is not None and "disclose_s" in entry.timings, (n.name, entry)


def test_invalidArguments_allCommitErrorScore_auditorsAgree(net: Network, trio: list[NodeProc]) -> None:
    task_id = net.create_task(image_args(102, steps=0), GPU)
    assert net.wait_final(task_id, TIMEOUT, trio) == TaskStatus.SUCCESS
    assert [int(e.outcome) for e in net.events("TaskSettled", task_id)] == [Outcome.SUCCESS]
    disclosed = _disclosed(net, task_id)
    assert len(disclosed) == 3 and set(disclosed.values()) == {scores.ERROR_SCORE}
    manifest, files = net.results(task_id)
    assert files == [] and manifest.score == "0x"


def test_killedAfterCommit_restarted_stillDeliversAndDiscloses(net: Network, trio: list[NodeProc]) -> None:
    a, b, c = trio
    # Only A can execute (B and C paused by their operators). A's process is down while the task
    # is created, so B and C are back online before A commits (only nodes online before a
    # commitment may audit it). A and B die right after their commit transaction is mined,
    # before the journal records it.
    a.kill()
    assert b.cli("pause") == 0 and c.cli("pause") == 0
    task_id = net.create_task(image_args(103), GPU)
    assert net.task(task_id).executor == a.address
    assert b.cli("resume") == 0 and c.cli("resume") == 0
    a.arm_crash("commit_mined")
    b.arm_crash("commit_mined")
    a.start()

    assert a.wait_exit(TIMEOUT) == -9
    t = net.task(task_id)
    assert TaskStatus(int(t.status)) == TaskStatus.COMMITTED and not t.delivered
    entry = a.entry(task_id)
    assert entry is not None and entry.stage == Stage.COMPUTED
    assert bytes(net.market.commitmentOf(task_id, a.address)) == entry.commitment

    # A restarts from its journal: it delivers, the draw picks B and C.
    a.start()
    assert b.wait_exit(TIMEOUT) == -9  # B committed as an auditor and died
    assert b.address in list(net.task(task_id).auditors)
    b.start()
    assert net.wait_final(task_id, TIMEOUT, trio) == TaskStatus.SUCCESS
    assert [int(e.outcome) for e in net.events("TaskSettled", task_id)] == [Outcome.SUCCESS]
    assert set(_disclosed(net, task_id)) == {a.address, b.address, c.address}
    assert "the commitment is on-chain already (resumed)" in a.current_log()
    _wait_journals_done(trio, task_id)


def test_cheatingExecutor_isSlashedByTheAudit(net: Network, trio: list[NodeProc]) -> None:
    a, b, c = trio
    for n in trio:
        assert n.cli("pause") == 0
    cheater = net.new_node("cheater", GPU, behaviour="wrong_image")  # joined, not running yet
    task_id = net.create_task(image_args(104), GPU)
    assert net.task(task_id).executor == cheater.address
    # A and B come back before the cheater commits (only nodes online before a commitment
    # may audit it); the draw then picks them.
    assert a.cli("resume") == 0 and b.cli("resume") == 0
    cheater.start()
    assert net.wait_final(task_id, TIMEOUT, [*trio, cheater]) == TaskStatus.REFUNDED
    assert [int(e.outcome) for e in net.events("TaskSettled", task_id)] == [Outcome.EXECUTOR_SLASHED]
    assert [e.node for e in net.events("NodeSlashed", task_id)] == [cheater.address]
    assert _status(net, cheater) == NodeStatus.QUIT
    assert "TEST-ONLY behaviour" in cheater.log()
    # The slashed node has nothing left to do: its loop exits by itself.
    assert cheater.wait_exit(TIMEOUT) == 0
