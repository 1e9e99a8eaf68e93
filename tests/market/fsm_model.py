"""A plain Python model of the task market, and a lean JSON-RPC harness to drive Anvil fast.

The model keeps what the market must do with money and tasks (escrows, the audit pool, node
balances, statuses, the queue order, the audit rules) written independently of the Solidity.
Random choices the chain makes (which node runs a task, the draw, which nodes audit) are read
from the events and checked for validity; everything that follows from them is predicted and
compared with what the chain did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import requests
from eth_abi import decode, encode
from eth_utils import keccak, to_checksum_address

from crynux_common.enums import Outcome, TaskStatus

BPS = 10_000
GAS_PRICE = 100 * 10**9  # above any base fee Anvil reaches in these runs
MANTISSA_BITS = 17


# ------------------------------------------------------------------ JSON-RPC harness


class RpcError(AssertionError):
    pass


class Rpc:
    """eth_sendTransaction from unlocked/impersonated accounts with explicit gas (no estimate),
    and raw batched eth_calls: a few ms per transaction instead of Ape's ~50."""

    def __init__(self, uri: str):
        self.uri = uri
        self.session = requests.Session()
        self._id = 0
        self.timing: dict[str, float] = {}
        self.polls = 0

    def _time(self, key: str, t0: float) -> None:
        self.timing[key] = self.timing.get(key, 0.0) + time.perf_counter() - t0

    def request(self, method: str, params: list) -> Any:
        self._id += 1
        t0 = time.perf_counter()
        r = self.session.post(
            self.uri, json={"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}
        )
        body = r.json()
        self._time(method, t0)
        if "error" in body:
            raise RpcError(f"{method}: {body['error']}")
        return body["result"]

    def batch(self, calls: list[tuple[str, list]]) -> list[Any]:
        if not calls:
            return []
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)
        ]
        t0 = time.perf_counter()
        replies = sorted(self.session.post(self.uri, json=payload).json(), key=lambda x: x["id"])
        self._time("batch:" + calls[-1][0], t0)
        out = []
        for rep in replies:
            if "error" in rep:
                raise RpcError(str(rep["error"]))
            out.append(rep["result"])
        return out

    def send(self, frm: str, to: str, data: bytes, timestamp: int, gas: int = 5_000_000) -> dict:
        tx = {
            "from": frm,
            "to": to,
            "data": "0x" + data.hex(),
            "gas": hex(gas),
            "gasPrice": hex(GAS_PRICE),
        }
        _, tx_hash = self.batch(
            [("evm_setNextBlockTimestamp", [hex(timestamp)]), ("eth_sendTransaction", [tx])]
        )
        # Anvil mines on arrival but may answer the receipt query a moment later.
        for _ in range(1000):
            receipt = self.request("eth_getTransactionReceipt", [tx_hash])
            if receipt is not None:
                break
            self.polls += 1
            time.sleep(0.001)
        else:
            raise RpcError(f"not mined: {tx_hash}")
        return receipt


class Abi:
    """Encodes calls and decodes events of one contract from its JSON ABI."""

    def __init__(self, address: str, abi: list[dict]):
        self.address = address
        self.functions: dict[str, tuple[bytes, list[str], list[str]]] = {}
        self.events: dict[bytes, tuple[str, list[dict]]] = {}
        for item in abi:
            if item["type"] == "function":
                types = [_abi_type(i) for i in item["inputs"]]
                sel = keccak(f"{item['name']}({','.join(types)})".encode())[:4]
                self.functions[item["name"]] = (sel, types, [_abi_type(o) for o in item["outputs"]])
            elif item["type"] == "event":
                types = [_abi_type(i) for i in item["inputs"]]
                topic = keccak(f"{item['name']}({','.join(types)})".encode())
                self.events[topic] = (item["name"], item["inputs"])

    def data(self, fn: str, *args) -> bytes:
        sel, types, _ = self.functions[fn]
        return sel + encode(types, list(args))

    def call_params(self, fn: str, *args) -> tuple[str, list]:
        return (
            "eth_call",
            [{"to": self.address, "data": "0x" + self.data(fn, *args).hex()}, "latest"],
        )

    def decode_result(self, fn: str, raw: str) -> Any:
        out = decode(self.functions[fn][2], bytes.fromhex(raw[2:]))
        return out[0] if len(out) == 1 else out

    def decode_log(self, log: dict) -> tuple[str, dict] | None:
        if log["address"].lower() != self.address.lower() or not log["topics"]:
            return None
        topic = bytes.fromhex(log["topics"][0][2:])
        if topic not in self.events:
            return None
        name, inputs = self.events[topic]
        args: dict[str, Any] = {}
        indexed = [i for i in inputs if i.get("indexed")]
        plain = [i for i in inputs if not i.get("indexed")]
        for inp, t in zip(indexed, log["topics"][1:]):
            (args[inp["name"]],) = decode([_abi_type(inp)], bytes.fromhex(t[2:]))
        vals = decode([_abi_type(i) for i in plain], bytes.fromhex(log["data"][2:]))
        for inp, v in zip(plain, vals):
            args[inp["name"]] = v
        for k, v in args.items():
            if isinstance(v, str) and v.startswith("0x") and len(v) == 42:
                args[k] = to_checksum_address(v)
        return name, args


def _abi_type(item: dict) -> str:
    t = item["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + t[5:]
    return t


# ------------------------------------------------------------------ scores and values


def bucket_of(value: int) -> int:
    """TaskQueue.bucketOf: exact below 2^17, else (exponent, 17 mantissa bits)."""
    if value < (1 << MANTISSA_BITS):
        return value
    msb = value.bit_length() - 1
    return ((msb - (MANTISSA_BITS - 1)) << MANTISSA_BITS) | (
        (value >> (msb - MANTISSA_BITS)) & ((1 << MANTISSA_BITS) - 1)
    )


def scores_match(a: bytes, b: bytes, image: bool, threshold: int) -> bool:
    if len(a) != len(b):
        return False
    if not image or len(a) % 8:
        return a == b
    for off in range(0, len(a), 8):
        x = int.from_bytes(a[off : off + 8], "big") ^ int.from_bytes(b[off : off + 8], "big")
        if x.bit_count() > threshold:
            return False
    return True


# ------------------------------------------------------------------ the model


@dataclass
class Party:
    node: str
    start: int = 0
    score: bytes | None = None
    salt: bytes = b""
    committed: bool = False
    disclosed: bool = False
    slashed: bool = False


@dataclass
class MTask:
    id: int
    creator: str
    fee: int
    always: bool
    image: bool
    num_images: int
    min_vram: int
    gpu: bytes  # 32 zero bytes = any
    value: int
    status: TaskStatus = TaskStatus.NONE
    escrow: int = 0
    executor: Party | None = None
    commit_block: int = 0
    late: bool = False
    delivered: bool = False
    exec_done: bool = False
    resolved_clear: bool = False
    drawn: bool = False
    forced: bool = False  # drawn because the commit block's hash was lost: the pool pays nothing
    draw_time: int = 0
    searching: bool = False
    audit_gpu: bytes = b"\x00" * 32
    audit_vram: int = 0
    auditors: list[Party] = field(default_factory=list)
    disclose_start: int = 0

    @property
    def open(self) -> bool:
        return TaskStatus.STARTED <= self.status <= TaskStatus.DISCLOSING

    def parties(self) -> list[Party]:
        return ([self.executor] if self.executor else []) + self.auditors

    def owing(self) -> list[Party]:
        """Parties that must disclose: the executor and every committed auditor, unless slashed."""
        return [
            p for p in [self.executor] + [a for a in self.auditors if a.committed] if not p.slashed
        ]


@dataclass
class MNode:
    account: Any
    idx: int
    gpu: str = ""
    vram: int = 0
    stake: int = 0
    online_since: int = 0  # block of its last join or resume

    @property
    def address(self) -> str:
        return self.account.address


def fits(req_gpu: bytes, min_vram: int, gpu: str, vram: int) -> bool:
    if req_gpu == b"\x00" * 32:
        return vram >= min_vram
    return req_gpu == keccak(gpu.encode()) and vram == min_vram


@dataclass
class Params:
    non_gen: int = 30
    per_image: int = 20
    text_gen: int = 10
    max_queue: int = 4
    min_timeout: int = 180
    factor: int = 3
    audit_rate: int = 5000
    levy_bps: int = 1000
    threshold: int = 5
    audit_window: int = 600
    disclose_window: int = 300
    max_classes: int = 3
    audit_scan: int = 8
    queue_timeout: int = 86_400

    def tuple(self) -> tuple:
        return (
            self.non_gen,
            self.per_image,
            self.text_gen,
            self.max_queue,
            self.min_timeout,
            self.factor,
            self.audit_rate,
            self.levy_bps,
            self.threshold,
            self.audit_window,
            self.disclose_window,
            self.max_classes,
            self.audit_scan,
            self.queue_timeout,
        )

    def time(self, image: bool, n: int) -> int:
        return self.non_gen + (n * self.per_image if image else self.text_gen)

    def timeout(self, image: bool, n: int) -> int:
        return max(self.min_timeout, self.factor * self.time(image, n))


@dataclass
class Settlement:
    """What a settlement must do: the outcome and every CNX movement."""

    outcome: Outcome
    paid: dict[str, int]
    slashed: list[str]
    refund: int
    levy: int


def predict_settlement(
    t: MTask, p: Params, pool: int, stakes: dict[str, int], exec_slash_before: int = 0
) -> Settlement:
    """The settlement of a task whose end is reached, from the model's own facts.
    `exec_slash_before`: what slashing the silent executor put into the pool earlier in the
    settling transaction (disclosure timeout)."""
    levy_of = lambda fee: fee * p.levy_bps // BPS
    ex = t.executor
    assert ex is not None
    if t.status == TaskStatus.STARTED:
        return Settlement(Outcome.NOT_COMMITTED, {}, [], t.escrow, 0)
    if not t.drawn or t.status == TaskStatus.AUDITING:
        # undrawn, or drawn and settled before any disclosure (no auditor committed, or every
        # committed one was slashed): as if undrawn
        if t.delivered:
            levy = levy_of(t.fee)
            return Settlement(Outcome.SUCCESS, {ex.node: t.fee - levy}, [], t.escrow - t.fee, levy)
        return Settlement(Outcome.NOT_DELIVERED, {}, [], t.escrow, 0)
    parties = [ex] + t.auditors + [None] * (2 - len(t.auditors))
    present = [q is not None and q.disclosed and not q.slashed for q in parties]

    def m(i: int, j: int) -> bool:
        return (
            present[i]
            and present[j]
            and scores_match(parties[i].score, parties[j].score, t.image, p.threshold)
        )

    alone = sum(present) == 1
    agree = [
        present[0] and (m(0, 1) or m(0, 2) or alone),
        present[1] and (m(0, 1) or m(1, 2) or alone),
        present[2] and (m(0, 2) or m(1, 2) or alone),
    ]
    slashed: list[str] = []
    paid: dict[str, int] = {}
    refund = t.escrow
    levy = 0
    exec_slash = 0  # what slashing the executor put into the pool in the settling transaction
    if not present[0]:
        outcome = Outcome.EXECUTOR_SLASHED
        exec_slash = exec_slash_before
    elif agree[0]:
        outcome = Outcome.SUCCESS if t.delivered else Outcome.NOT_DELIVERED
    elif all(present) and agree[1] and agree[2]:
        outcome = Outcome.EXECUTOR_SLASHED
        slashed.append(ex.node)
        pool += stakes[ex.node] // 2
        exec_slash = stakes[ex.node] // 2
    else:
        outcome = Outcome.NO_CONSENSUS
    if outcome == Outcome.SUCCESS:
        levy = levy_of(t.fee)
        pool += levy
        paid[ex.node] = t.fee - levy
        refund -= t.fee
    for i in (1, 2):
        q = parties[i]
        if q is None or not q.committed or q.slashed:
            continue
        if all(present) and not agree[i] and agree[0] and agree[3 - i]:
            slashed.append(q.node)
            pool += stakes[q.node] // 2
    winners = [parties[i].node for i in (1, 2) if agree[i]]
    if winners:
        each = t.fee
        if not t.always:
            # The pool pays only for audits nobody could force: a random draw whose executor
            # was paid, or at most what slashing the executor put in; nothing otherwise.
            if outcome == Outcome.SUCCESS and not t.forced:
                budget = pool
            elif outcome == Outcome.EXECUTOR_SLASHED:
                budget = exec_slash
            else:
                budget = 0
            if budget < t.fee * len(winners):
                each = budget // len(winners)
        for w in winners:
            paid[w] = paid.get(w, 0) + each
        if t.always:
            refund -= each * len(winners)
    return Settlement(outcome, paid, slashed, refund, levy)
