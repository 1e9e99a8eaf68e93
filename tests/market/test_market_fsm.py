"""Stateful property test: random joins, pauses, quits, task creations, cancels, honest and
cheating commitments, deliveries, disclosures, timeouts and time travel against the real token,
registry and market, with the plain Python model of fsm_model.py beside them.

Invariants checked after every step: CNX is conserved (the market holds exactly the escrows of
open tasks + the audit pool + the nodes' unclaimed balances; the registry exactly the stakes),
the audit pool and every settlement match the model, no node is in two tasks. Checked on every
event: no node audits its own task, selected nodes meet the requirement, a freed node takes a
pending audit before the queue and then the best queued task it is eligible for. At the end of
each run: once everything is overdue, timeout() brings every started task to a final state.

Speed: transactions go straight to Anvil over JSON-RPC (eth_sendTransaction, explicit gas);
each run starts from an evm_snapshot and reverts to it.
Examples: MARKET_FSM_EXAMPLES (default 200) runs of up to MARKET_FSM_STEPS (default 35) steps,
about a minute on a 2-core machine; HYPOTHESIS_PROFILE=long: 2000 runs of up to 50 steps.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict

import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from crynux_common.enums import NodeStatus, Outcome, SlashReason, TaskStatus
from tests.conftest import CNX
from tests.market.conftest import MIN_STAKE, VERSION, commitment, flip_bits, image_score
from tests.market.fsm_model import (
    BPS,
    Abi,
    MNode,
    MTask,
    Params,
    Party,
    Rpc,
    RpcError,
    bucket_of,
    fits,
    predict_settlement,
)

ZERO32 = b"\x00" * 32
GPUS = ["A", "B"]
VRAMS = [16, 24]
REQS = [(8, ZERO32), (16, ZERO32), (24, ZERO32), (24, keccak(b"A")), (16, keccak(b"B"))]
FEES = [1 * CNX, 2 * CNX, 5 * CNX, 10 * CNX, 20 * CNX]
TRAVEL = [5, 10, 30, 60, 200, 700]
CHOICES = ["honest", "near", "cheat", "error"]

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
EXAMPLES = int(os.environ.get("MARKET_FSM_EXAMPLES", "10000" if LONG else "200"))
STEPS = int(os.environ.get("MARKET_FSM_STEPS", "50" if LONG else "35"))


class Ctx:
    """What the machine needs from the fixtures."""

    def __init__(self, rpc, market, registry, token, owner, relay, creators, nodes, params):
        self.rpc = rpc
        self.market = market
        self.registry = registry
        self.token = token
        self.owner = owner
        self.relay = relay
        self.creators = creators
        self.nodes = nodes
        self.params = params
        self.initial = None


STATS: Counter = Counter()

#: The coalition: the third creator and the first three node accounts. They play like anyone
#: (restricted tasks, garbage scores, delays, timeouts, pause/resume/join/quit); the invariant
#: `coalition_gains_nothing_from_its_own_tasks` watches what its own tasks bring it.
TIMEOUT_BOUNTY = 1 * CNX  # the market's default timeoutBounty
COALITION_CREATOR = 2
COALITION_NODES = 3


class MarketMachine(RuleBasedStateMachine):
    ctx: Ctx

    def __init__(self):
        super().__init__()
        c = self.ctx
        self.rpc = c.rpc
        self.p: Params = c.params
        self.snapshot = self.rpc.request("evm_snapshot", [])
        self._cache = None
        latest = self.rpc.request("eth_getBlockByNumber", ["latest", False])
        self.now = int(latest["timestamp"], 16) + 1
        self.block = int(latest["number"], 16)
        self.tasks: dict[int, MTask] = {}
        self.nodes = [MNode(a, i) for i, a in enumerate(c.nodes)]
        self.node = {n.address: n for n in self.nodes}
        self.pool = 0
        self.bal: dict[str, int] = defaultdict(int)
        self.pending: list[int] = []
        self.coalition = {c.creators[COALITION_CREATOR]} | {
            n.address for n in self.nodes[:COALITION_NODES]
        }
        self.own_loss: dict[int, int] = defaultdict(int)  # stake lost in the coalition's own tasks
        self.own_gain = 0  # what its own tasks brought it beyond what the protocol pays anyone
        if c.initial is None:  # every run starts from the same snapshot: read once
            c.initial = (
                {a: self._cnx(a) for a in c.creators},
                self._cnx(c.market.address),
                self._cnx(c.registry.address),
            )
        creators, market_cnx0, self.registry_cnx0 = c.initial
        self.creator_cnx = dict(creators)
        assert market_cnx0 == 0

    def teardown(self):
        try:
            self._drain()
            self._final_checks()
        finally:
            assert self.rpc.request("evm_revert", [self.snapshot]) is True, "evm_revert failed"

    # ------------------------------------------------------------------ chain access

    def _cnx(self, addr: str) -> int:
        t = self.ctx.token
        return t.decode_result("balanceOf", self.rpc.request(*t.call_params("balanceOf", addr)))

    def _chain(self) -> dict:
        """Node infos, the contracts' CNX and the audit pool, in one batch; cached until the
        next transaction."""
        if self._cache is None:
            c = self.ctx
            reg = c.registry
            calls = [reg.call_params("nodeInfo", n.address) for n in self.nodes]
            calls += [
                c.token.call_params("balanceOf", c.market.address),
                c.token.call_params("balanceOf", c.registry.address),
                c.market.call_params("auditPool"),
            ]
            raws = self.rpc.batch(calls)
            k = len(self.nodes)
            infos = {
                n.address: reg.decode_result("nodeInfo", r) for n, r in zip(self.nodes, raws[:k])
            }
            self._cache = {
                "info": infos,
                "status": {a: NodeStatus(i[0]) for a, i in infos.items()},
                "market_cnx": c.token.decode_result("balanceOf", raws[k]),
                "registry_cnx": c.token.decode_result("balanceOf", raws[k + 1]),
                "pool": c.market.decode_result("auditPool", raws[k + 2]),
            }
        return self._cache

    def _node_infos(self) -> dict[str, tuple]:
        return self._chain()["info"]

    def _status(self) -> dict[str, NodeStatus]:
        return self._chain()["status"]

    def _send(self, frm: str, abi: Abi, fn: str, *args) -> list[tuple[str, str, dict]]:
        self._cache = None
        receipt = self.rpc.send(frm, abi.address, abi.data(fn, *args), self.now)
        self.block = int(receipt["blockNumber"], 16)
        tx_time = self.now
        self.now += 1
        if int(receipt["status"], 16) != 1:
            raise AssertionError(
                f"{fn}{args} from {frm} reverted: {self._revert_reason(frm, abi, fn, args)}"
            )
        STATS[f"tx:{fn}"] += 1
        events = []
        for log in receipt["logs"]:
            for who, a in (("market", self.ctx.market), ("registry", self.ctx.registry)):
                d = a.decode_log(log)
                if d:
                    events.append((who, d[0], d[1]))
        self._apply(events, tx_time)
        return events

    def _revert_reason(self, frm, abi, fn, args) -> str:
        try:
            self.rpc.request(
                "eth_call",
                [
                    {"from": frm, "to": abi.address, "data": "0x" + abi.data(fn, *args).hex()},
                    "latest",
                ],
            )
            return "(passes as a call now)"
        except RpcError as e:
            return str(e)

    def _expect_revert(self, frm: str, abi: Abi, fn: str, *args, error: str) -> None:
        sel = keccak(error.encode())[:4].hex()
        try:
            self.rpc.request(
                "eth_call",
                [
                    {"from": frm, "to": abi.address, "data": "0x" + abi.data(fn, *args).hex()},
                    "latest",
                ],
            )
        except RpcError as e:
            assert sel in str(e), f"{fn}: expected {error}, got {e}"
            return
        raise AssertionError(f"{fn}{args} should revert with {error}")

    # ------------------------------------------------------------------ model helpers

    def _honest(self, t: MTask) -> bytes:
        return image_score(t.num_images, t.id) if t.image else keccak(f"text:{t.id}".encode())

    def _score(self, t: MTask, node: str, choice: str) -> bytes:
        honest = self._honest(t)
        if choice == "honest":
            return honest
        if choice == "near":
            return flip_bits(honest, 2) if t.image else honest
        if choice == "error":
            return b""
        idx = self.node[node].idx
        return (
            image_score(t.num_images, 10_000 + idx)
            if t.image
            else keccak(f"cheat:{t.id}:{idx}".encode())
        )

    def _deadline(self, t: MTask, start: int) -> int:
        return start + self.p.timeout(t.image, t.num_images)

    def _queued(self) -> list[MTask]:
        return [t for t in self.tasks.values() if t.status == TaskStatus.QUEUED]

    def _busy_tasks(self, addr: str) -> list[int]:
        out = []
        for t in self.tasks.values():
            if not t.open:
                continue
            if t.executor and t.executor.node == addr and not t.exec_done:
                out.append(t.id)
            for a in t.auditors:
                if (
                    a.node == addr
                    and not a.committed
                    and not a.slashed
                    and t.status == TaskStatus.AUDITING
                ):
                    out.append(t.id)
        return out

    def _audit_fits(self, t: MTask, n: MNode) -> bool:
        return (
            self.now_tx <= t.draw_time + self.p.audit_window
            and fits(t.audit_gpu, t.audit_vram, n.gpu, n.vram)
            and n.address != t.executor.node
            and all(a.node != n.address for a in t.auditors)
            and n.online_since < t.commit_block  # no sniping by a late join or resume
        )

    def _check_pull(self, n: MNode, pulled: MTask | None, audit: MTask | None) -> None:
        """A freed node takes a pending audit it may do (the scan rotates entries it cannot
        take to the back, so the model keeps the pending audits as a set), else the best queued
        task it is eligible for (highest bucket, oldest first)."""
        eligible_audits = [self.tasks[i] for i in self.pending if self._audit_fits(self.tasks[i], n)]
        if audit is not None:
            assert audit in eligible_audits, (n.address, audit.id, self.pending)
            return
        if len(self.pending) <= self.p.audit_scan:  # the scan saw every pending audit
            assert not eligible_audits, (
                f"{n.address} pulled task {pulled.id} over audit {eligible_audits[0].id}"
            )
        cands = [t for t in self._queued() if fits(t.gpu, t.min_vram, n.gpu, n.vram)]
        best = max(cands, key=lambda t: (bucket_of(t.value), -t.id))
        assert pulled.id == best.id, (pulled.id, best.id)

    # ------------------------------------------------------------------ events -> model

    def _apply(self, events, tx_time: int) -> None:
        self.now_tx = tx_time
        stakes_before = {n.address: n.stake for n in self.nodes}
        buffered: dict[int, list] = defaultdict(list)
        refunds_due: dict[int, int] = {}
        exec_slashed: dict[int, int] = {}  # what slashing a silent executor put into the pool
        created_here: set[int] = set()
        for who, name, a in events:
            if who == "registry":
                if name in ("StakeReturned", "NodeSlashed", "NodePenalized"):  # stake leaves
                    self.node[a["node"]].stake -= a["amount"]
                if name == "NodeJoined" or (
                    name == "NodeStatusChanged" and a["status"] == NodeStatus.AVAILABLE
                ):
                    self.node[a["node"]].online_since = self.block
                continue
            tid = a.get("taskId")
            t = self.tasks.get(tid) if tid is not None else None
            if name == "TaskCreated":
                self.tasks[tid] = MTask(
                    id=tid,
                    creator=a["creator"],
                    fee=a["fee"],
                    always=a["alwaysAudit"],
                    image=a["taskType"] == 0,
                    num_images=a["numImages"],
                    min_vram=a["minVram"],
                    gpu=a["requiredGpu"],
                    value=a["value"],
                    escrow=a["fee"] * (3 if a["alwaysAudit"] else 1),
                )
                assert a["value"] == a["fee"] // self.p.time(a["taskType"] == 0, a["numImages"])
                self.creator_cnx[a["creator"]] -= self.tasks[tid].escrow
                created_here.add(tid)
            elif name == "TaskQueued":
                t.status = TaskStatus.QUEUED
            elif name == "TaskStarted":
                n = self.node[a["executor"]]
                assert fits(t.gpu, t.min_vram, n.gpu, n.vram), (
                    "executor does not meet the requirement"
                )
                if t.status == TaskStatus.QUEUED:
                    self._check_pull(n, t, None)
                else:
                    assert tid in created_here
                assert not self._busy_tasks(n.address), f"{n.address} already busy"
                t.status = TaskStatus.STARTED
                t.executor = Party(n.address, start=tx_time)
            elif name == "TaskEvicted":
                STATS["evicted"] += 1
                low = min(self._queued(), key=lambda q: (bucket_of(q.value), -q.id))
                assert low.id == tid, (low.id, tid)
                assert bucket_of(self.tasks[a["byTaskId"]].value) > bucket_of(low.value)
                t.status = TaskStatus.EVICTED
                refunds_due[tid] = t.escrow
                t.escrow = 0
            elif name == "TaskCancelled":
                t.status = TaskStatus.CANCELLED
                refunds_due[tid] = t.escrow
                t.escrow = 0
            elif name == "AuditorAssigned":
                n = self.node[a["auditor"]]
                assert n.address != t.executor.node, "a node audits its own task"
                assert all(x.node != n.address for x in t.auditors), "the same auditor twice"
                assert fits(t.audit_gpu, t.audit_vram, n.gpu, n.vram), "auditor lacks the hardware"
                assert not self._busy_tasks(n.address), f"{n.address} already busy"
                if t.searching:
                    self._check_pull(n, None, t)
                t.auditors.append(Party(n.address, start=tx_time))
                if t.searching and len(t.auditors) == 2:
                    t.searching = False
                    self.pending.remove(tid)
            elif name == "AuditPending":
                assert a["missing"] == 2 - len(t.auditors)
                t.searching = True
                self.pending.append(tid)
            elif name == "AuditSearchEnded":
                assert a["found"] == len(t.auditors) < 2
                assert tx_time > t.draw_time + self.p.audit_window
                t.searching = False
                self.pending.remove(tid)
            elif name == "TaskDelivered":
                t.delivered = t.exec_done = True
            elif name == "DrawResolved":
                if t.always or self.block - t.commit_block > 256:
                    assert a["drawn"], "alwaysAudit or a stale commit block must be drawn"
                    t.forced = not t.always and self.block - t.commit_block > 256
                STATS[f"drawn:{a['drawn']}"] += 1
                if a["drawn"]:
                    t.drawn = True
                    t.draw_time = tx_time
                    t.status = TaskStatus.AUDITING
                    if t.image:
                        t.audit_gpu, t.audit_vram = t.gpu, t.min_vram
                    else:
                        ex = self.node[t.executor.node]
                        t.audit_gpu, t.audit_vram = keccak(ex.gpu.encode()), ex.vram
                else:
                    t.resolved_clear = True
            elif name == "DisclosureOpened":
                assert t.exec_done and not t.searching
                assert all(x.committed or x.slashed for x in t.auditors)
                assert any(x.committed and not x.slashed for x in t.auditors)
                t.status = TaskStatus.DISCLOSING
                t.disclose_start = tx_time
            elif name == "TaskTimedOut":
                if a["node"] == t.executor.node and not t.exec_done:
                    assert tx_time > self._deadline(t, t.executor.start)
                    t.exec_done = True
                else:
                    (x,) = [x for x in t.auditors if x.node == a["node"]]
                    assert not x.committed and tx_time > self._deadline(t, x.start)
            elif name == "NodeSlashed":
                if a["reason"] == SlashReason.DISAGREED:
                    buffered[tid].append((name, a))
                    continue
                party = next(x for x in t.parties() if x.node == a["node"])
                assert not party.slashed
                if a["reason"] == SlashReason.NO_COMMIT:
                    assert not party.committed and party is not t.executor
                else:
                    assert not party.disclosed and t.status == TaskStatus.DISCLOSING
                    assert tx_time > t.disclose_start + self.p.disclose_window
                party.slashed = True
                STATS[f"slash:{SlashReason(a['reason']).name}"] += 1
                assert a["toAuditPool"] == stakes_before[a["node"]] // 2
                self.pool += a["toAuditPool"]
                if a["node"] in self.coalition:
                    self.own_loss[tid] += stakes_before[a["node"]]
                if party is t.executor:
                    exec_slashed[tid] = a["toAuditPool"]
            elif name == "TimeoutBountyPaid":
                # never committed: whoever timed it out is paid from the executor's stake
                assert t.status == TaskStatus.STARTED
                ex = t.executor.node
                assert a["amount"] == min(TIMEOUT_BOUNTY, stakes_before[ex])
                self.bal[a["caller"]] += a["amount"]
                if ex in self.coalition:
                    self.own_loss[tid] += a["amount"]
            elif name == "ExecutorPenalized":
                # committed, never delivered, undrawn: the levy comes out of the stake
                assert a["node"] == t.executor.node and not t.delivered and not t.drawn
                levy = t.fee * self.p.levy_bps // BPS
                assert a["amount"] == min(levy, stakes_before[a["node"]])
                self.pool += a["amount"]
                if a["node"] in self.coalition:
                    self.own_loss[tid] += a["amount"]
            elif name in ("NodePaid", "AuditLevy"):
                buffered[tid].append((name, a))
            elif name == "TaskSettled":
                STATS[f"outcome:{Outcome(a['outcome']).name}"] += 1
                self._settle(
                    t, Outcome(a["outcome"]), buffered.pop(tid, []), stakes_before, refunds_due,
                    exec_slashed.get(tid, 0),
                )
            elif name == "TaskRefunded":
                assert refunds_due.pop(tid) == a["amount"], "refund amount"
                assert a["creator"] == t.creator
                self.creator_cnx[t.creator] += a["amount"]
            elif name == "Withdrawn":
                assert self.bal[a["node"]] == a["amount"]
                self.bal[a["node"]] = 0
                if a["node"] in self.creator_cnx:  # a creator's timeout bounties
                    self.creator_cnx[a["node"]] += a["amount"]
        assert not buffered, f"payments without a settlement: {dict(buffered)}"
        assert not {k: v for k, v in refunds_due.items() if v}, f"refunds not made: {refunds_due}"

    def _account_own_task(self, t: MTask, exp, stakes: dict) -> None:
        """What one of the coalition's own tasks brought it: the refund and every payment to
        its nodes, less the escrow, the stakes its nodes lost (slashes) and penalties. The only
        gain the protocol allows (docs/security.md, 1d) is the pool's payment to its auditors
        of a random draw that paid its executor, or of an audit that caught someone else's
        executor cheating; anything more is a leak."""
        ex = t.executor.node
        loss = self.own_loss.pop(t.id, 0)
        loss += sum(stakes[n] for n in exp.slashed if n in self.coalition)
        got = exp.refund + sum(v for n, v in exp.paid.items() if n in self.coalition)
        delta = got - t.escrow - loss
        allowed = 0
        random_success = exp.outcome == Outcome.SUCCESS and not t.forced
        caught_other = exp.outcome == Outcome.EXECUTOR_SLASHED and ex not in self.coalition
        if not t.always and (random_success or caught_other):
            allowed = sum(v for n, v in exp.paid.items() if n in self.coalition and n != ex)
        STATS["own_task:gain" if delta > 0 else "own_task:no_gain"] += 1
        assert delta <= allowed, (t.id, exp, delta, allowed)
        self.own_gain += delta - allowed

    @invariant()
    def coalition_gains_nothing_from_its_own_tasks(self):
        assert self.own_gain <= 0, self.own_gain

    def _settle(
        self, t: MTask, outcome: Outcome, flows: list, stakes: dict, refunds_due: dict,
        exec_slash: int = 0,
    ) -> None:
        if t.status == TaskStatus.AUDITING and t.drawn:
            # every remaining party has disclosed, or nobody is left to check
            assert not t.searching and t.exec_done
        exp = predict_settlement(t, self.p, self.pool, stakes, exec_slash)
        if t.creator == self.ctx.creators[COALITION_CREATOR]:
            self._account_own_task(t, exp, stakes)
        assert outcome == exp.outcome, (t.id, outcome, exp)
        paid = {a["node"]: a["amount"] for n, a in flows if n == "NodePaid"}
        assert paid == exp.paid, (t.id, paid, exp)
        slashed = [a["node"] for n, a in flows if n == "NodeSlashed"]
        assert slashed == exp.slashed, (t.id, slashed, exp)
        levy = sum(a["amount"] for n, a in flows if n == "AuditLevy")
        assert levy == exp.levy
        for n, a in flows:
            if n == "NodeSlashed":
                assert a["toAuditPool"] == stakes[a["node"]] // 2
                self.pool += a["toAuditPool"]
                next(x for x in t.parties() if x.node == a["node"]).slashed = True
        self.pool += levy
        executor_pay = exp.paid.get(t.executor.node, 0) if outcome == Outcome.SUCCESS else 0
        for node, amount in exp.paid.items():
            self.bal[node] += amount
            if not t.always and node != t.executor.node:
                self.pool -= amount
        assert self.pool >= 0
        from_escrow = sum(v for k, v in exp.paid.items() if k != t.executor.node) if t.always else 0
        if outcome == Outcome.SUCCESS:
            assert t.escrow == t.fee + from_escrow + exp.refund
        else:
            assert executor_pay == 0 and t.escrow == from_escrow + exp.refund
        refunds_due[t.id] = exp.refund
        t.escrow = 0
        t.status = TaskStatus.SUCCESS if outcome == Outcome.SUCCESS else TaskStatus.REFUNDED
        if t.id in self.pending:
            self.pending.remove(t.id)
        t.searching = False

    # ------------------------------------------------------------------ rules: nodes

    @initialize(
        hw=st.lists(
            st.tuples(st.sampled_from(GPUS), st.sampled_from(VRAMS)), min_size=2, max_size=6
        )
    )
    def start_network(self, hw):
        """A few nodes join first, so that tasks run from the first steps."""
        for n, (gpu, vram) in zip(self.nodes, hw):
            n.gpu, n.vram = gpu, vram
            n.stake += MIN_STAKE
            self._send(
                n.address,
                self.ctx.registry,
                "join",
                MIN_STAKE,
                gpu,
                vram,
                list(VERSION),
                [keccak(b"base:sd15")],
            )

    def _active_nodes(self) -> int:
        return sum(s not in (NodeStatus.NONE, NodeStatus.QUIT) for s in self._status().values())

    @precondition(lambda self: self._active_nodes() < 7)
    @rule(data=st.data(), gpu=st.sampled_from(GPUS), vram=st.sampled_from(VRAMS))
    def join(self, data, gpu, vram):
        infos = self._node_infos()
        cands = [
            n
            for n in self.nodes
            if NodeStatus(infos[n.address][0]) in (NodeStatus.NONE, NodeStatus.QUIT)
        ]
        cands = [n for n in cands if infos[n.address][10] == 0]  # no unsettled task
        if not cands:
            return
        n = data.draw(st.sampled_from(cands))
        n.gpu, n.vram = gpu, vram
        n.stake += MIN_STAKE
        self._send(
            n.address,
            self.ctx.registry,
            "join",
            MIN_STAKE,
            gpu,
            vram,
            list(VERSION),
            [keccak(b"base:sd15")],
        )

    @rule(data=st.data(), action=st.sampled_from(["pause", "resume", "quit"]))
    def node_control(self, data, action):
        allowed = {
            "pause": (NodeStatus.AVAILABLE, NodeStatus.BUSY),
            "resume": (NodeStatus.PAUSED, NodeStatus.PENDING_PAUSE),
            "quit": (
                NodeStatus.AVAILABLE,
                NodeStatus.BUSY,
                NodeStatus.PENDING_PAUSE,
                NodeStatus.PAUSED,
            ),
        }[action]
        status = self._status()
        cands = [n for n in self.nodes if status[n.address] in allowed]
        if not cands:
            return
        n = data.draw(st.sampled_from(cands))
        self._send(n.address, self.ctx.registry, action)

    # ------------------------------------------------------------------ rules: applications

    @rule(
        who=st.integers(0, 2),
        image=st.booleans(),
        n=st.integers(1, 3),
        fee=st.sampled_from(FEES),
        always=st.booleans(),
        req=st.sampled_from(REQS),
    )
    def create(self, who, image, n, fee, always, req):
        creator = self.ctx.creators[who]
        n = n if image else 0
        min_vram, gpu = req
        value = fee // self.p.time(image, n)
        status = self._status()
        can_start = any(
            status[x.address] == NodeStatus.AVAILABLE and fits(gpu, min_vram, x.gpu, x.vram)
            for x in self.nodes
        )
        request = (
            0 if image else 1,
            keccak(b"args"),
            [keccak(b"base:sd15")],
            min_vram,
            gpu,
            n,
            fee,
            always,
        )
        market = self.ctx.market
        if not can_start:
            queued = self._queued()
            remaining = list(queued)
            if len(queued) >= self.p.max_queue:
                low = min(queued, key=lambda q: (bucket_of(q.value), -q.id))
                if bucket_of(value) <= bucket_of(low.value):
                    self._expect_revert(
                        creator,
                        market,
                        "createTask",
                        request,
                        error="QueueFull(uint256,uint256,uint256)",
                    )
                    return
                remaining.remove(low)
            if gpu != ZERO32 and not any(
                status[x.address] not in (NodeStatus.NONE, NodeStatus.QUIT)
                and keccak(x.gpu.encode()) == gpu
                and x.vram == min_vram
                for x in self.nodes
            ):
                self._expect_revert(
                    creator, market, "createTask", request, error="NoNodeForGpu(bytes32,uint16)"
                )
                return
            classes = {(q.gpu, q.min_vram) for q in remaining}
            if (gpu, min_vram) not in classes and len(classes) >= self.p.max_classes:
                self._expect_revert(
                    creator, market, "createTask", request, error="TooManyQueueClasses(uint256)"
                )
                return
        events = self._send(creator, market, "createTask", request)
        started = [e for e in events if e[1] == "TaskStarted"]
        assert bool(started) == can_start, (
            "a task must start at once iff an eligible node is Available"
        )
        if started:
            assert status[started[0][2]["executor"]] == NodeStatus.AVAILABLE

    @precondition(lambda self: self._queued())
    @rule(data=st.data())
    def cancel(self, data):
        t = data.draw(st.sampled_from(self._queued()))
        other = next(c for c in self.ctx.creators if c != t.creator)
        self._expect_revert(
            other, self.ctx.market, "cancel", t.id, error="NotCreator(uint256,address)"
        )
        self._send(t.creator, self.ctx.market, "cancel", t.id)

    # ------------------------------------------------------------------ rules: task lifecycle

    def _exec_commit_cands(self) -> list[MTask]:
        return [
            t
            for t in self.tasks.values()
            if t.status == TaskStatus.STARTED and self.now <= self._deadline(t, t.executor.start)
        ]

    @precondition(lambda self: self._exec_commit_cands())
    @rule(data=st.data(), choice=st.sampled_from(CHOICES))
    def executor_commit(self, data, choice):
        t = data.draw(st.sampled_from(self._exec_commit_cands()))
        ex = t.executor
        ex.score = self._score(t, ex.node, choice)
        ex.salt = keccak(f"salt:{t.id}:{ex.node}".encode())
        self._send(
            ex.node, self.ctx.market, "commit", t.id, commitment(t.id, ex.node, ex.score, ex.salt)
        )
        ex.committed = True
        t.commit_block = self.block
        t.status = TaskStatus.COMMITTED

    def _auditor_commit_cands(self) -> list[tuple[MTask, Party]]:
        return [
            (t, a)
            for t in self.tasks.values()
            if t.status == TaskStatus.AUDITING
            for a in t.auditors
            if not a.committed and not a.slashed and self.now <= self._deadline(t, a.start)
        ]

    @precondition(lambda self: self._auditor_commit_cands())
    @rule(data=st.data(), choice=st.sampled_from(CHOICES))
    def auditor_commit(self, data, choice):
        t, a = data.draw(st.sampled_from(self._auditor_commit_cands()))
        a.score = self._score(t, a.node, choice)
        a.salt = keccak(f"salt:{t.id}:{a.node}".encode())
        a.committed = True  # before the events: the commit may open the disclosure
        self._send(
            a.node, self.ctx.market, "commit", t.id, commitment(t.id, a.node, a.score, a.salt)
        )

    def _deliver_cands(self) -> list[MTask]:
        return [
            t
            for t in self.tasks.values()
            if (
                t.status == TaskStatus.COMMITTED
                or (t.status in (TaskStatus.AUDITING, TaskStatus.DISCLOSING) and not t.exec_done)
            )
            and self.now <= self._deadline(t, t.executor.start)
        ]

    @precondition(lambda self: self._deliver_cands())
    @rule(data=st.data())
    def deliver(self, data):
        t = data.draw(st.sampled_from(self._deliver_cands()))
        self._send(self.ctx.relay, self.ctx.market, "attestDelivery", t.id)

    def _resolve_cands(self) -> list[MTask]:
        return [
            t
            for t in self.tasks.values()
            if t.status == TaskStatus.COMMITTED and not t.resolved_clear
        ]

    @precondition(lambda self: self._resolve_cands())
    @rule(data=st.data())
    def resolve_draw(self, data):
        t = data.draw(st.sampled_from(self._resolve_cands()))
        self._send(self.ctx.creators[0], self.ctx.market, "resolveDraw", t.id)

    def _disclose_cands(self) -> list[tuple[MTask, Party]]:
        return [
            (t, q)
            for t in self.tasks.values()
            if t.status == TaskStatus.DISCLOSING
            and self.now <= t.disclose_start + self.p.disclose_window
            for q in t.owing()
            if not q.disclosed
        ]

    @precondition(lambda self: self._disclose_cands())
    @rule(data=st.data())
    def disclose(self, data):
        t, q = data.draw(st.sampled_from(self._disclose_cands()))
        q.disclosed = True  # before the events: the last disclosure settles
        self._send(q.node, self.ctx.market, "disclose", t.id, q.score, q.salt)

    def _any_action(self) -> bool:
        return bool(
            self._exec_commit_cands()
            or self._auditor_commit_cands()
            or self._deliver_cands()
            or self._disclose_cands()
        )

    def _advance(self, data, choice: str) -> None:
        """Moves one task one step along its happy path (weighted in: two rules call it)."""
        kinds = [
            k
            for k, cands in (
                ("exec", self._exec_commit_cands()),
                ("audit", self._auditor_commit_cands()),
                ("deliver", self._deliver_cands()),
                ("disclose", self._disclose_cands()),
            )
            if cands
        ]
        kind = data.draw(st.sampled_from(kinds))
        if kind == "exec":
            self.executor_commit(data, choice)
        elif kind == "audit":
            self.auditor_commit(data, choice)
        elif kind == "deliver":
            self.deliver(data)
        else:
            self.disclose(data)

    @precondition(lambda self: self._any_action())
    @rule(data=st.data(), choice=st.sampled_from(CHOICES))
    def advance(self, data, choice):
        self._advance(data, choice)

    @precondition(lambda self: self._any_action())
    @rule(data=st.data(), choice=st.sampled_from(CHOICES))
    def advance_more(self, data, choice):
        self._advance(data, choice)

    def _due(self, t: MTask) -> bool:
        now = self.now
        if t.status in (TaskStatus.STARTED, TaskStatus.COMMITTED):
            return now > self._deadline(t, t.executor.start)
        if t.status not in (TaskStatus.AUDITING, TaskStatus.DISCLOSING):
            return False
        if not t.exec_done and now > self._deadline(t, t.executor.start):
            return True
        if t.status == TaskStatus.DISCLOSING:
            return now > t.disclose_start + self.p.disclose_window
        if t.searching and now > t.draw_time + self.p.audit_window:
            return True
        return any(
            not a.committed and not a.slashed and now > self._deadline(t, a.start)
            for a in t.auditors
        )

    @precondition(
        lambda self: any(t.open or t.status == TaskStatus.QUEUED for t in self.tasks.values())
    )
    @rule(data=st.data())
    def timeout(self, data):
        cands = [t for t in self.tasks.values() if t.open or t.status == TaskStatus.QUEUED]
        t = data.draw(st.sampled_from(cands))
        if not self._due(t):
            self._expect_revert(
                self.ctx.creators[1], self.ctx.market, "timeout", t.id, error="NothingDue(uint256)"
            )
            return
        self._send(self.ctx.creators[1], self.ctx.market, "timeout", t.id)

    @rule(dt=st.sampled_from(TRAVEL))
    def travel(self, dt):
        self.now += dt

    @precondition(lambda self: any(v > 0 for v in self.bal.values()))
    @rule(data=st.data())
    def withdraw(self, data):
        cands = [a for a, v in self.bal.items() if v > 0]
        self._send(data.draw(st.sampled_from(sorted(cands))), self.ctx.market, "withdraw")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def no_node_in_two_tasks(self):
        for n in self.nodes:
            assert len(self._busy_tasks(n.address)) <= 1, n.address

    @invariant()
    def cnx_conserved(self):
        chain = self._chain()
        escrow = sum(t.escrow for t in self.tasks.values())
        assert chain["pool"] == self.pool, (chain["pool"], self.pool)
        assert chain["market_cnx"] == escrow + self.pool + sum(self.bal.values()), (
            chain["market_cnx"],
            escrow,
        )
        assert chain["registry_cnx"] == self.registry_cnx0 + sum(n.stake for n in self.nodes)

    @invariant()
    def available_nodes_have_nothing_to_take(self):
        """A node that became Available took any pending audit or queued task it could do."""
        if not self.pending and not self._queued():
            return
        status = self._status()
        self.now_tx = self.now - 1
        for n in self.nodes:
            if status[n.address] != NodeStatus.AVAILABLE:
                continue
            assert not any(fits(q.gpu, q.min_vram, n.gpu, n.vram) for q in self._queued()), (
                n.address
            )
            if len(self.pending) > self.p.audit_scan:
                continue  # the scan rotates: a later freed node reaches the rest
            for i in self.pending:
                t = self.tasks[i]
                # The draw rejects nodes online since the commit; when such nodes fit, its
                # eight tries may all have met them (docs/security.md: auditor dilution).
                assert not self._audit_fits(t, n) or self._diluted(t, status), (n.address, t.id)

    def _diluted(self, t: MTask, status: dict) -> bool:
        return any(
            status[m.address] == NodeStatus.AVAILABLE
            and m.online_since >= t.commit_block
            and fits(t.audit_gpu, t.audit_vram, m.gpu, m.vram)
            for m in self.nodes
        )

    # ------------------------------------------------------------------ end of a run

    def _drain(self):
        """Once every deadline has passed, timeout() ends every started task (a few rounds:
        a timeout may start an audit, which has deadlines of its own)."""
        for _ in range(12):
            open_tasks = [t for t in self.tasks.values() if t.open]
            if not open_tasks:
                break
            self.now += self.p.audit_window + self.p.disclose_window + 2000
            for t in open_tasks:
                if t.open:
                    assert self._due(t)
                    self._send(self.ctx.creators[1], self.ctx.market, "timeout", t.id)
        assert not [t.id for t in self.tasks.values() if t.open], "tasks left open"

    def _final_checks(self):
        c = self.ctx
        market = c.market
        calls = [market.call_params("balanceOf", n.address) for n in self.nodes]
        calls += [market.call_params("currentTask", n.address) for n in self.nodes]
        calls += [c.token.call_params("balanceOf", a) for a in c.creators]
        raws = self.rpc.batch(calls)
        k = len(self.nodes)
        for n, r in zip(self.nodes, raws[:k]):
            assert market.decode_result("balanceOf", r) == self.bal[n.address]
        self.cnx_conserved()
        status = self._status()
        for n, r in zip(self.nodes, raws[k : 2 * k]):
            busy = status[n.address] in (
                NodeStatus.BUSY,
                NodeStatus.PENDING_PAUSE,
                NodeStatus.PENDING_QUIT,
            )
            assert busy == (market.decode_result("currentTask", r) != 0), (
                n.address,
                status[n.address],
            )
        for a, r in zip(c.creators, raws[2 * k :]):
            assert c.token.decode_result("balanceOf", r) == self.creator_cnx[a]
        tasks = list(self.tasks.values())
        for t, raw in zip(
            tasks, self.rpc.batch([market.call_params("getTask", t.id) for t in tasks])
        ):
            assert market.decode_result("getTask", raw)[2] == t.status, t.id


MarketMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


@pytest.fixture
def fsm_ctx(chain, market, registry, token, owner, relay, creators, node_pool):
    rpc = Rpc(chain.provider.uri)
    abi = lambda c: [x.model_dump(mode="json", by_alias=True) for x in c.contract_type.abi]
    m, r, t = (
        Abi(market.address, abi(market)),
        Abi(registry.address, abi(registry)),
        Abi(token.address, abi(token)),
    )
    rpc.request("anvil_autoImpersonateAccount", [True])
    params = Params(audit_scan=32)  # more than a run's tasks: every pending audit is in reach
    rpc.send(owner.address, m.address, m.data("setParams", params.tuple()), _next_ts(rpc))
    return Ctx(
        rpc, m, r, t, owner.address, relay.address, [a.address for a in creators], node_pool, params
    )


def _next_ts(rpc: Rpc) -> int:
    return int(rpc.request("eth_getBlockByNumber", ["latest", False])["timestamp"], 16) + 1


def test_market_state_machine(fsm_ctx):
    MarketMachine.ctx = fsm_ctx
    STATS.clear()
    run_state_machine_as_test(MarketMachine, settings=MarketMachine.TestCase.settings)
    print("\nmarket state machine:", dict(sorted(STATS.items())))
    print(
        "rpc seconds:",
        {k: round(v, 1) for k, v in fsm_ctx.rpc.timing.items()},
        "receipt polls:",
        fsm_ctx.rpc.polls,
    )
