"""One node executing tasks end to end (no audits: auditRateBps = 0).

Real Anvil, real contracts, a relay process and a `crynux-node run` process; the node
joins through `crynux-node join` (permit), runs tiny models at 64x64 with 2 steps.
"""
from __future__ import annotations

import hashlib
import json

import pytest
from eth_utils import keccak

from crynux_common import scores
from crynux_common.enums import NodeStatus, Outcome, TaskStatus
from crynux_common.schemas import TaskType
from node_client.journal import Stage

from .harness import CNX, Network, NodeProc, image_args, text_args, wait_for

GPU = "LOOP-EXEC"
# Tasks name no GPU: the module's one node takes them all, and they count for task mining
# (a task restricted to a GPU does not: docs/security.md, task mining).
ANY_GPU = None
TIMEOUT = 180  # generous: CI machines are small and busy


@pytest.fixture(scope="module")
def node(net: Network) -> NodeProc:
    n = net.new_node("exec", GPU)
    return n.start().wait_ready()


def test_join_declaresHardwareModelsAndStake(net: Network, node: NodeProc) -> None:
    info = net.registry.nodeInfo(node.address)
    assert NodeStatus(int(info.status)) in (NodeStatus.AVAILABLE, NodeStatus.BUSY)
    assert int(info.stake) == 400 * CNX
    assert bytes(info.gpu) == keccak(text=GPU) and int(info.vram) == 8
    models = {bytes(m) for m in info.models}
    assert keccak(text="base:tiny-sd") in models and keccak(text="base:tiny-gpt2") in models


def test_join_withApprove_thenQuit(net: Network) -> None:
    other = net.new_node("approve", "LOOP-OTHER", join=False, join_with_permit=False, stake_cnx=450)
    assert other.cli("join") == 0
    info = net.registry.nodeInfo(other.address)
    assert NodeStatus(int(info.status)) == NodeStatus.AVAILABLE and int(info.stake) == 450 * CNX
    assert other.cli("join") == 2  # already joined: a clear refusal, no transaction
    assert other.cli("quit") == 0
    assert int(net.token.balanceOf(other.address)) == 1_000 * CNX  # the whole stake came back


def test_executor_completesImageTask_endToEnd(net: Network, node: NodeProc) -> None:
    args = image_args(11, num_images=2)
    task_id = net.create_task(args, ANY_GPU, num_images=2)
    assert net.task(task_id).executor == node.address

    assert net.wait_final(task_id, TIMEOUT, [node]) == TaskStatus.SUCCESS
    settled = net.events("TaskSettled", task_id)
    assert [int(e.outcome) for e in settled] == [Outcome.SUCCESS]
    assert not net.task(task_id).drawn
    paid = [e for e in net.events("NodePaid", task_id) if e.node == node.address]
    assert sum(int(e.amount) for e in paid) == 9 * CNX  # fee minus the 10% audit levy

    # What the application gets is what the node committed to.
    manifest, files = net.results(task_id)
    assert len(files) == 2 and all(f.startswith(b"\x89PNG") for f in files)
    entry = wait_for(lambda: node.entry(task_id) if node.entry(task_id).stage == Stage.DONE else None,
                     TIMEOUT, "the journal to close the task", [node])
    assert scores.image_score(files) == entry.score == bytes.fromhex(manifest.score.removeprefix("0x"))
    assert bytes(net.market.commitmentOf(task_id, node.address)) == entry.commitment
    assert entry.commitment == scores.commitment(task_id, node.address, entry.score, entry.salt)
    for phase in ("args_s", "infer_s", "commit_s", "upload_s"):
        assert phase in entry.timings, entry.timings
    assert f"task {task_id} [executor] done" in node.log()


def test_executor_completesTextTask_endToEnd(net: Network, node: NodeProc) -> None:
    task_id = net.create_task(text_args(5), ANY_GPU, task_type=TaskType.TEXT)
    assert net.wait_final(task_id, TIMEOUT, [node]) == TaskStatus.SUCCESS
    _, files = net.results(task_id)
    assert len(files) == 1
    response = json.loads(files[0])
    assert response  # canonical JSON of the response
    entry = node.entry(task_id)
    assert entry is not None and entry.score == hashlib.sha256(files[0]).digest()


def test_secondTask_sameModel_doesNotLoadItAgain(net: Network, node: NodeProc) -> None:
    first = net.create_task(image_args(21), ANY_GPU)
    assert net.wait_final(first, TIMEOUT, [node]) == TaskStatus.SUCCESS
    second = net.create_task(image_args(22), ANY_GPU)
    assert net.wait_final(second, TIMEOUT, [node]) == TaskStatus.SUCCESS
    wait_for(lambda: node.entry(second).stage == Stage.DONE, TIMEOUT, "the journal to close the task", [node])
    loads_first = node.entry(first).timings["model_loads"]
    loads_second = node.entry(second).timings["model_loads"]
    # The engine process counts loads per model since it started: the second task found it warm.
    assert loads_second["image:base:tiny-sd"] == loads_first["image:base:tiny-sd"] == 1


def test_invalidArguments_commitErrorScore_andDeliverNoFiles(net: Network, node: NodeProc) -> None:
    bad = image_args(31, steps=0)  # the schema needs steps >= 1: every honest node says "invalid"
    task_id = net.create_task(bad, ANY_GPU)
    assert net.wait_final(task_id, TIMEOUT, [node]) == TaskStatus.SUCCESS
    manifest, files = net.results(task_id)
    assert files == [] and manifest.score == "0x"
    entry = node.entry(task_id)
    assert entry is not None and entry.score == scores.ERROR_SCORE and entry.note


def test_argumentsNamingOtherModels_areInvalid(net: Network, node: NodeProc) -> None:
    # The task declares tiny-gpt2 on-chain but the arguments name tiny-sd: error score.
    task_id = net.create_task(image_args(41), ANY_GPU, models=["base:tiny-gpt2"])
    assert net.wait_final(task_id, TIMEOUT, [node]) == TaskStatus.SUCCESS
    entry = node.entry(task_id)
    assert entry is not None and entry.score == scores.ERROR_SCORE
    assert "not the models the task declares" in (entry.note or "")


def test_traversalLoraName_errorScoreCommittedOnChain_creatorPays(net: Network, node: NodeProc) -> None:
    """A LoRA name that cannot exist (path traversal) is invalid arguments: the node commits
    the error score instead of trying to fetch it and timing out; the creator pays the fee."""
    lora = "lora:x/../../../../etc/passwd"
    before = net.token.balanceOf(net.creator)
    args = image_args(44, lora={"model": lora})
    task_id = net.create_task(args, ANY_GPU, models=["base:tiny-sd", lora])
    assert net.wait_final(task_id, TIMEOUT, [node]) == TaskStatus.SUCCESS
    entry = node.entry(task_id)
    assert entry is not None and entry.score == scores.ERROR_SCORE
    assert "lora.model" in (entry.note or "") and "file path" in (entry.note or "")
    assert bytes(net.market.commitmentOf(task_id, node.address)) == scores.commitment(
        task_id, node.address, scores.ERROR_SCORE, entry.salt)
    assert [int(e.outcome) for e in net.events("TaskSettled", task_id)] == [Outcome.SUCCESS]
    assert net.token.balanceOf(net.creator) == before - 10 * CNX
    manifest, files = net.results(task_id)
    assert files == [] and manifest.score == "0x"


def test_argumentsNeverUploaded_errorScoreAfterTheGrace_creatorPays(net: Network, node: NodeProc) -> None:
    """A creator who never uploads the arguments does not cost the node a timeout (QoS 0):
    once the relay's 30 s grace (chain time) is over it answers 410 and the node commits the
    error score; the task succeeds and the fee is paid."""
    from ape import chain

    before = net.token.balanceOf(net.creator)
    task_id = net.create_task(image_args(43), ANY_GPU, upload_args=False)
    wait_for(lambda: "has not uploaded" in node.current_log(), 60, "the node to ask for the arguments", [node])
    assert net.status(task_id) == TaskStatus.STARTED  # still waiting for them
    chain.mine(1, timestamp=chain.pending_timestamp + 31)
    assert net.wait_final(task_id, TIMEOUT, [node]) == TaskStatus.SUCCESS
    entry = node.entry(task_id)
    assert entry is not None and entry.score == scores.ERROR_SCORE
    assert "never reached the relay" in (entry.note or "")
    assert [int(e.outcome) for e in net.events("TaskSettled", task_id)] == [Outcome.SUCCESS]
    assert net.token.balanceOf(net.creator) == before - 10 * CNX


def test_inferenceFailure_restartsEngine_commitsNothing_andTimesOut(net: Network, node: NodeProc) -> None:
    from ape import chain

    # A model this node cannot get (downloads off): ModelUnavailable, an InferenceFailure.
    args = image_args(61, base_model="base:nobody/not-downloaded")
    task_id = net.create_task(args, ANY_GPU, models=["base:nobody/not-downloaded"])
    assert net.task(task_id).executor == node.address
    wait_for(lambda: (e := node.entry(task_id)) is not None and e.stage == Stage.ABANDONED, TIMEOUT,
             "the node to give up on the task", [node])
    entry = node.entry(task_id)
    assert entry.failures == 2 and "ModelUnavailable" in (entry.error or "")
    assert node.log().count("restarting the engine process") >= 2
    # One clear line says why nothing is committed (not held, not allow-listed).
    assert node.log().count(f"task {task_id}: this node cannot obtain a model the task names") == 1
    assert "allowed_repos" in node.log()
    # Never a false error score: nothing was committed, the task waits for its timeout.
    assert bytes(net.market.commitmentOf(task_id, node.address)) == b"\x00" * 32
    assert net.status(task_id) == TaskStatus.STARTED

    # Past the deadline the node ends the task itself (timeout()) and is free again.
    chain.mine(1, timestamp=int(net.task(task_id).deadline) + 1)
    assert net.wait_final(task_id, TIMEOUT, [node]) == TaskStatus.REFUNDED
    assert [int(e.outcome) for e in net.events("TaskSettled", task_id)] == [Outcome.NOT_COMMITTED]
    wait_for(lambda: node.entry(task_id).stage == Stage.DONE, TIMEOUT, "the journal to close the task", [node])
    wait_for(lambda: NodeStatus(int(net.registry.statusOf(node.address))) == NodeStatus.AVAILABLE, TIMEOUT,
             "the node to be available again", [node])


def test_sigterm_finishesCurrentTask_pausesAndExits_thenResumesOnRestart(net: Network, node: NodeProc) -> None:
    task_id = net.create_task(image_args(51), ANY_GPU)
    assert net.task(task_id).executor == node.address
    assert node.terminate(timeout=TIMEOUT) == 0
    # The task was finished before the exit, and the node no longer takes tasks.
    assert net.status(task_id) == TaskStatus.SUCCESS
    assert NodeStatus(int(net.registry.statusOf(node.address))) == NodeStatus.PAUSED
    assert "paused on-chain" in node.log()

    node.start()
    wait_for(lambda: NodeStatus(int(net.registry.statusOf(node.address))) == NodeStatus.AVAILABLE,
             TIMEOUT, "the restarted node to resume", [node])
    assert node.cli("status") == 0
    from node_client.cli import status_data
    from node_client.config import load_config

    status = status_data(load_config(node.config_path))
    assert status["status"] == "AVAILABLE" and status["journal"]["stages"].get("done", 0) >= 1

    # Operator commands: pause (kept across a restart), quit (stake back), withdraw (earnings).
    assert node.terminate(timeout=TIMEOUT) == 0
    assert node.cli("quit") == 0
    assert NodeStatus(int(net.registry.statusOf(node.address))) == NodeStatus.QUIT
    before = int(net.token.balanceOf(node.address))
    earned = int(net.market.balanceOf(node.address))
    assert earned > 0
    assert node.cli("withdraw") == 0
    assert int(net.token.balanceOf(node.address)) == before + earned


def test_rewards_nodeAndTaskMining_claimedThroughTheCli(net: Network, node: NodeProc) -> None:
    """Runs after the node quit (previous test): its node-mining accrual is frozen and its
    successful tasks of month 0 are recorded by task mining."""
    from ape import chain as ape_chain

    from crynux_common.deployment import Deployment
    from node_client.chain import NodeChain
    from node_client.rewards import read_rewards

    node_mining, task_mining = net.contracts["NodeMining"], net.contracts["TaskMining"]
    chain = NodeChain(net.rpc_url, Deployment.load(net.deployment_path), node.key)
    month = int(task_mining.currentMonth())
    tasks = int(task_mining.tasksOf(month, node.address))
    assert tasks >= 4  # the successful tasks of this module

    early = read_rewards(chain)
    assert early.node_mining == int(node_mining.claimable(node.address)) > 0
    assert early.task_months == {} and early.current_month == month and early.current_tasks == tasks
    balance = int(net.token.balanceOf(node.address))
    assert node.cli("rewards") == 0 and node.cli("claim") == 0  # node mining only: the month runs
    assert int(net.token.balanceOf(node.address)) == balance + early.node_mining
    assert read_rewards(chain).total == 0 and node.cli("claim") == 0  # nothing left: no transaction

    ape_chain.pending_timestamp = int(task_mining.monthStart(month + 1)) + 1
    ape_chain.mine()
    ended = read_rewards(chain)
    all_tasks, budget, _ = (int(v) for v in task_mining.monthInfo(month))
    assert ended.task_months == {month: budget * tasks // all_tasks} and ended.node_mining == 0
    assert ended.current_month == month + 1 and ended.current_tasks == 0
    balance = int(net.token.balanceOf(node.address))
    assert node.cli("claim") == 0
    assert int(net.token.balanceOf(node.address)) == balance + ended.task_mining
    assert int(task_mining.tasksOf(month, node.address)) == 0 and read_rewards(chain).total == 0
