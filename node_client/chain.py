"""Typed web3.py access to the registry and the market, as one node uses them.

Reads (task, node, commitment, current task), transactions with nonce handling and
waiting for receipts (revert reasons decoded into the contracts' custom errors), and
event polling over bounded block ranges.

    chain = NodeChain(rpc_url, Deployment.load(path), wallet.account)
    task = chain.get_task(7)             # TaskInfo
    chain.commit(7, commitment)          # waits for the receipt; raises TxReverted
    events, head = chain.poll_events(from_block)
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from crynux_common.permit import sign_permit
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3Exception

from crynux_common.deployment import Deployment
from crynux_common.enums import NodeStatus, TaskStatus

log = logging.getLogger(__name__)

ZERO_ADDRESS = "0x" + "00" * 20
ZERO32 = b"\x00" * 32
#: Gas limits at least this high (unused gas is not paid): what a call costs depends on what
#: others did first (the last of three disclosures settles the audit, with slashes and
#: payments; an auditor's commit can open the disclosure and start the node's next task).
COMMIT_GAS_FLOOR = 600_000
DISCLOSE_GAS_FLOOR = 1_000_000


class ChainError(Exception):
    """A chain operation failed."""


class ChainUnavailable(ChainError):
    """The RPC endpoint is unreachable or answered with a transport/JSON-RPC error; retry later."""


class TxReverted(ChainError):
    """A transaction (or its gas estimate) reverted; `error` is the custom error's name."""

    def __init__(self, what: str, error: str | None, args: dict[str, Any] | None = None, tx_hash: str | None = None):
        detail = f"{error}({', '.join(f'{k}={v}' for k, v in (args or {}).items())})" if error else "revert"
        super().__init__(f"{what} reverted: {detail}" + (f" in {tx_hash}" if tx_hash else ""))
        self.what = what
        self.error = error
        self.args_ = args or {}
        self.tx_hash = tx_hash


# --- typed views ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskInfo:
    """ITaskMarket.TaskInfo of one task."""

    task_id: int
    creator: str
    task_type: int
    status: TaskStatus
    args_hash: bytes
    fee: int
    num_images: int
    min_vram: int
    required_gpu: bytes
    always_audit: bool
    executor: str
    auditors: tuple[str, str]
    auditor_deadlines: tuple[int, int]
    delivered: bool
    draw_resolved: bool
    drawn: bool
    commit_block: int
    start_time: int
    deadline: int
    audit_search_deadline: int
    disclose_deadline: int

    @property
    def exists(self) -> bool:
        return self.status != TaskStatus.NONE

    def is_executor(self, node: str) -> bool:
        return self.executor.lower() == node.lower()

    def auditor_index(self, node: str) -> int | None:
        for i, a in enumerate(self.auditors):
            if a.lower() == node.lower():
                return i
        return None

    def commit_deadline(self, node: str) -> int:
        """The deadline of `node`'s commitment (executor: execution deadline)."""
        if self.is_executor(node):
            return self.deadline
        i = self.auditor_index(node)
        return self.auditor_deadlines[i] if i is not None else 0


@dataclass(frozen=True)
class NodeInfo:
    """INodeRegistry.NodeInfo of one node."""

    address: str
    status: NodeStatus
    stake: int
    qos: int
    weight: int
    gpu: bytes
    vram: int
    version: tuple[int, int, int]
    task_count: int
    unsettled: int
    models: tuple[bytes, ...]


@dataclass(frozen=True)
class ChainEvent:
    name: str
    task_id: int
    block: int
    args: dict[str, Any] = field(default_factory=dict)


# --- helpers -------------------------------------------------------------------------------


def _abi_type(item: dict[str, Any]) -> str:
    t = str(item["type"])
    if t.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item.get("components", []))
        return f"({inner}){t[len('tuple'):]}"
    return t


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _struct(outputs: list[dict[str, Any]], value: Any) -> dict[str, Any]:
    """Maps a struct return value (tuple) to {snake_case_name: value} using the ABI."""
    comps = outputs[0]["components"] if len(outputs) == 1 and "components" in outputs[0] else outputs
    if isinstance(value, dict):
        return {_snake(k): v for k, v in value.items()}
    return {_snake(c["name"]): v for c, v in zip(comps, value, strict=True)}


def _is_transport_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError, OSError))


class NodeChain:
    """The registry, the market and the token for one node account."""

    def __init__(
        self,
        rpc_url: str,
        deployment: Deployment,
        account: LocalAccount | None,
        *,
        receipt_timeout: float = 120.0,
        poll_latency: float = 0.1,
        log_chunk_blocks: int = 2000,
        request_timeout: float = 30.0,
    ) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": request_timeout}))
        self.deployment = deployment
        self.market: Contract = deployment.contract(self.w3, "TaskMarket")
        self.registry: Contract = deployment.contract(self.w3, "NodeRegistry")
        self.token: Contract = deployment.contract(self.w3, "CNXToken")
        self._account = account
        self._receipt_timeout = receipt_timeout
        self._poll_latency = poll_latency
        self._chunk = log_chunk_blocks
        self._nonce_lock = threading.Lock()
        self._next_nonce: int | None = None
        self._errors = self._error_table()
        self._rpc_url = rpc_url

    # --- identity ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        if self._account is None:
            raise ChainError("no account configured")
        return str(self._account.address)

    def describe(self) -> str:
        return f"market {self.market.address}, registry {self.registry.address} via {self._rpc_url}"

    # --- low level --------------------------------------------------------------------------

    def _error_table(self) -> dict[bytes, tuple[str, list[dict[str, Any]]]]:
        table: dict[bytes, tuple[str, list[dict[str, Any]]]] = {}
        for entry in self.deployment.contracts.values():
            for item in entry.abi:
                if item.get("type") != "error":
                    continue
                inputs = list(item.get("inputs", []))
                sig = f"{item['name']}({','.join(_abi_type(i) for i in inputs)})"
                table[keccak(text=sig)[:4]] = (str(item["name"]), inputs)
        return table

    def decode_error(self, data: Any) -> tuple[str | None, dict[str, Any]]:
        """(custom error name, arguments) of revert data, or (None, {}) when unknown."""
        if isinstance(data, str):
            try:
                raw = bytes.fromhex(data.removeprefix("0x"))
            except ValueError:
                return None, {}
        elif isinstance(data, (bytes, bytearray)):
            raw = bytes(data)
        else:
            return None, {}
        found = self._errors.get(raw[:4])
        if found is None:
            return None, {}
        name, inputs = found
        try:
            values = abi_decode([_abi_type(i) for i in inputs], raw[4:])
        except Exception:
            return name, {}
        out = {}
        for i, v in zip(inputs, values, strict=True):
            out[i.get("name") or f"arg{len(out)}"] = "0x" + v.hex() if isinstance(v, bytes) else v
        return name, out

    def call(self, fn: Any) -> Any:
        """A view call of any deployment contract (custom errors decoded, transport errors
        raised as ChainUnavailable)."""
        return self._call(fn)

    def _call(self, fn: Any, **kw: Any) -> Any:
        try:
            return fn.call(**kw)
        except (ContractCustomError, ContractLogicError) as exc:
            name, args = self.decode_error(getattr(exc, "data", None))
            raise TxReverted(f"call {fn.fn_name}", name, args) from None
        except Exception as exc:
            if _is_transport_error(exc) or isinstance(exc, Web3Exception):
                raise ChainUnavailable(f"RPC call {fn.fn_name} failed: {exc}") from exc
            raise

    def block_number(self) -> int:
        try:
            return int(self.w3.eth.block_number)
        except Exception as exc:
            raise ChainUnavailable(f"cannot read the block number: {exc}") from exc

    def timestamp(self) -> int:
        """The latest block's timestamp (the market's clock)."""
        try:
            return int(self.w3.eth.get_block("latest")["timestamp"])
        except Exception as exc:
            raise ChainUnavailable(f"cannot read the latest block: {exc}") from exc

    # --- reads ------------------------------------------------------------------------------

    def get_task(self, task_id: int) -> TaskInfo:
        fn = self.market.functions.getTask(task_id)
        f = _struct(fn.abi["outputs"], self._call(fn))
        auditors = tuple(to_checksum_address(a) for a in f["auditors"])
        deadlines = tuple(int(d) for d in f["auditor_deadlines"])
        return TaskInfo(
            task_id=task_id,
            creator=to_checksum_address(f["creator"]),
            task_type=int(f["task_type"]),
            status=TaskStatus(int(f["status"])),
            args_hash=bytes(f["args_hash"]),
            fee=int(f["fee"]),
            num_images=int(f["num_images"]),
            min_vram=int(f["min_vram"]),
            required_gpu=bytes(f["required_gpu"]),
            always_audit=bool(f["always_audit"]),
            executor=to_checksum_address(f["executor"]),
            auditors=(auditors[0], auditors[1]),
            auditor_deadlines=(deadlines[0], deadlines[1]),
            delivered=bool(f["delivered"]),
            draw_resolved=bool(f["draw_resolved"]),
            drawn=bool(f["drawn"]),
            commit_block=int(f["commit_block"]),
            start_time=int(f["start_time"]),
            deadline=int(f["deadline"]),
            audit_search_deadline=int(f["audit_search_deadline"]),
            disclose_deadline=int(f["disclose_deadline"]),
        )

    def current_task(self, node: str | None = None) -> int:
        return int(self._call(self.market.functions.currentTask(to_checksum_address(node or self.address))))

    def commitment_of(self, task_id: int, node: str | None = None) -> bytes:
        fn = self.market.functions.commitmentOf(task_id, to_checksum_address(node or self.address))
        return bytes(self._call(fn))

    def market_params(self) -> dict[str, Any]:
        fn = self.market.functions.params()
        return _struct(fn.abi["outputs"], self._call(fn))

    def registry_params(self) -> dict[str, Any]:
        fn = self.registry.functions.params()
        return _struct(fn.abi["outputs"], self._call(fn))

    def node_info(self, node: str | None = None) -> NodeInfo:
        addr = to_checksum_address(node or self.address)
        fn = self.registry.functions.nodeInfo(addr)
        f = _struct(fn.abi["outputs"], self._call(fn))
        return NodeInfo(
            address=addr,
            status=NodeStatus(int(f["status"])),
            stake=int(f["stake"]),
            qos=int(f["qos"]),
            weight=int(f["weight"]),
            gpu=bytes(f["gpu"]),
            vram=int(f["vram"]),
            version=(int(f["major"]), int(f["minor"]), int(f["patch"])),
            task_count=int(f["task_count"]),
            unsettled=int(f["unsettled"]),
            models=tuple(bytes(m) for m in f["models"]),
        )

    def node_status(self, node: str | None = None) -> NodeStatus:
        fn = self.registry.functions.statusOf(to_checksum_address(node or self.address))
        return NodeStatus(int(self._call(fn)))

    def token_balance(self, who: str | None = None) -> int:
        return int(self._call(self.token.functions.balanceOf(to_checksum_address(who or self.address))))

    def market_balance(self, who: str | None = None) -> int:
        """CNX the market holds for the node (withdraw())."""
        return int(self._call(self.market.functions.balanceOf(to_checksum_address(who or self.address))))

    def eth_balance(self, who: str | None = None) -> int:
        try:
            return int(self.w3.eth.get_balance(to_checksum_address(who or self.address)))
        except Exception as exc:
            raise ChainUnavailable(f"cannot read the balance: {exc}") from exc

    # --- events -----------------------------------------------------------------------------

    def _topic(self, contract: Contract, name: str) -> bytes:
        abi = next(i for i in contract.abi if i.get("type") == "event" and i.get("name") == name)
        return keccak(text=f"{name}({','.join(_abi_type(i) for i in abi['inputs'])})")

    def _get_logs(self, params: dict[str, Any]) -> list[Any]:
        try:
            return list(self.w3.eth.get_logs(params))  # type: ignore[arg-type]
        except Exception as exc:
            raise ChainUnavailable(f"eth_getLogs failed: {exc}") from exc

    def poll_events(self, from_block: int, to_block: int | None = None) -> tuple[list[ChainEvent], int]:
        """This node's TaskStarted / AuditorAssigned and every DisclosureOpened in
        [from_block, to_block] (at most log_chunk_blocks at once). Returns (events, last
        block scanned); scan again from last + 1."""
        head = self.block_number() if to_block is None else to_block
        if from_block > head:
            return [], from_block - 1
        last = min(head, from_block + self._chunk - 1)
        me = "0x" + "00" * 12 + self.address.lower().removeprefix("0x")
        mine = self._get_logs({
            "address": self.market.address, "fromBlock": from_block, "toBlock": last,
            "topics": [["0x" + self._topic(self.market, n).hex() for n in ("TaskStarted", "AuditorAssigned")],
                       None, me],
        })
        opened = self._get_logs({
            "address": self.market.address, "fromBlock": from_block, "toBlock": last,
            "topics": ["0x" + self._topic(self.market, "DisclosureOpened").hex()],
        })
        events: list[ChainEvent] = []
        for raw in sorted([*mine, *opened], key=lambda r: (r["blockNumber"], r["logIndex"])):
            topic0 = bytes(raw["topics"][0])
            for name in ("TaskStarted", "AuditorAssigned", "DisclosureOpened"):
                if topic0 == self._topic(self.market, name):
                    decoded = getattr(self.market.events, name)().process_log(raw)
                    args = dict(decoded["args"])
                    events.append(ChainEvent(name, int(args["taskId"]), int(raw["blockNumber"]), args))
                    break
        return events, last

    def task_model_hashes(self, task_id: int, near_block: int | None = None) -> list[bytes]:
        """keccak256 of the task's model IDs, from its TaskCreated event (searched backwards
        from `near_block`, the block where the node saw the task, to the deployment block)."""
        topic0 = "0x" + self._topic(self.market, "TaskCreated").hex()
        topic1 = "0x" + task_id.to_bytes(32, "big").hex()
        hi = near_block if near_block is not None else self.block_number()
        floor = self.deployment.block
        while hi >= floor:
            lo = max(floor, hi - self._chunk + 1)
            logs = self._get_logs(
                {"address": self.market.address, "fromBlock": lo, "toBlock": hi, "topics": [topic0, topic1]}
            )
            if logs:
                decoded = self.market.events.TaskCreated().process_log(logs[0])
                return [bytes(m) for m in decoded["args"]["modelIds"]]
            hi = lo - 1
        raise ChainError(f"no TaskCreated event for task {task_id}")

    # --- transactions -----------------------------------------------------------------------

    def _nonce(self) -> int:
        pending = int(self.w3.eth.get_transaction_count(self.address, "pending"))
        return max(pending, self._next_nonce or 0)

    def transact(self, fn: Any, what: str | None = None, *, attempts: int = 3, min_gas: int = 0) -> dict[str, Any]:
        """Sends fn as a transaction from the node's account and waits for its receipt.

        The gas estimate runs first, so a call that would revert raises TxReverted with the
        contract's custom error before anything is sent. The gas limit is 1.5 x the estimate,
        at least `min_gas`: a call's cost can grow between estimate and inclusion (the last
        disclosure settles the task; an auditor's commit may open the disclosure and hand the
        node its next task). Raises ChainUnavailable when the RPC fails or the receipt does
        not come in time."""
        if self._account is None:
            raise ChainError("no account configured: cannot send transactions")
        what = what or f"{fn.fn_name}"
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                with self._nonce_lock:
                    try:
                        gas = fn.estimate_gas({"from": self.address})
                    except (ContractCustomError, ContractLogicError) as exc:
                        name, args = self.decode_error(getattr(exc, "data", None))
                        raise TxReverted(what, name, args) from None
                    nonce = self._nonce()
                    tx = fn.build_transaction(
                        {"from": self.address, "nonce": nonce, "gas": max(int(gas * 1.5) + 20_000, min_gas)}
                    )
                    signed = self._account.sign_transaction(tx)
                    tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                    self._next_nonce = nonce + 1
                receipt = self.w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=self._receipt_timeout, poll_latency=self._poll_latency
                )
                hx = "0x" + bytes(tx_hash).hex()
                if int(receipt["status"]) != 1:
                    # Mined but reverted (the state moved between estimate and inclusion): the
                    # call against the new state names the reason.
                    try:
                        fn.call({"from": self.address})
                        name, args = None, {}
                    except (ContractCustomError, ContractLogicError) as exc:
                        name, args = self.decode_error(getattr(exc, "data", None))
                    raise TxReverted(what, name, args, hx)
                log.debug("%s mined in block %d (%s, gas %d)", what, receipt["blockNumber"], hx, receipt["gasUsed"])
                return dict(receipt)
            except TxReverted:
                raise
            except TimeExhausted as exc:
                last = exc
                with self._nonce_lock:
                    self._next_nonce = None
                log.warning("%s: no receipt after %.0f s (attempt %d)", what, self._receipt_timeout, attempt + 1)
            except (Web3Exception, ValueError) as exc:
                # JSON-RPC errors: nonce too low, already known, underpriced ... resync the nonce.
                last = exc
                with self._nonce_lock:
                    self._next_nonce = None
                log.warning("%s: %s (attempt %d)", what, exc, attempt + 1)
            except Exception as exc:
                if not _is_transport_error(exc):
                    raise
                last = exc
                with self._nonce_lock:
                    self._next_nonce = None
                log.warning("%s: RPC unreachable: %s (attempt %d)", what, exc, attempt + 1)
            time.sleep(min(2.0**attempt, 10.0))
        raise ChainUnavailable(f"{what} failed after {attempts} attempts: {last}")

    # market
    def commit(self, task_id: int, commitment: bytes) -> dict[str, Any]:
        return self.transact(self.market.functions.commit(task_id, commitment), f"commit({task_id})",
                             min_gas=COMMIT_GAS_FLOOR)

    def disclose(self, task_id: int, score: bytes, salt: bytes) -> dict[str, Any]:
        return self.transact(self.market.functions.disclose(task_id, score, salt), f"disclose({task_id})",
                             min_gas=DISCLOSE_GAS_FLOOR)

    def timeout(self, task_id: int) -> dict[str, Any]:
        return self.transact(self.market.functions.timeout(task_id), f"timeout({task_id})",
                             min_gas=DISCLOSE_GAS_FLOOR)

    def withdraw(self) -> dict[str, Any]:
        return self.transact(self.market.functions.withdraw(), "withdraw()")

    # registry
    def approve_stake(self, amount: int) -> dict[str, Any] | None:
        """approve(registry, amount) unless the allowance already covers it."""
        owner = self.address
        allowance = int(self._call(self.token.functions.allowance(owner, self.registry.address)))
        if allowance >= amount:
            return None
        return self.transact(self.token.functions.approve(self.registry.address, amount), "approve(registry)")

    def join(self, stake: int, gpu_name: str, vram: int, version: Sequence[int], models: Sequence[bytes]) -> dict[str, Any]:
        fn = self.registry.functions.join(stake, gpu_name, vram, list(version), list(models))
        return self.transact(fn, "join")

    def join_with_permit(
        self, stake: int, gpu_name: str, vram: int, version: Sequence[int], models: Sequence[bytes],
        *, valid_for: int = 3600,
    ) -> dict[str, Any]:
        deadline = self.timestamp() + valid_for
        v, r, s = self.sign_permit(self.registry.address, stake, deadline)
        fn = self.registry.functions.joinWithPermit(
            stake, gpu_name, vram, list(version), list(models), deadline, v, r, s
        )
        return self.transact(fn, "joinWithPermit")

    def sign_permit(self, spender: str, value: int, deadline: int) -> tuple[int, bytes, bytes]:
        """An EIP-2612 permit of `value` CNX to `spender`, signed by the node's key."""
        assert self._account is not None
        domain = self._call(self.token.functions.eip712Domain())
        nonce = int(self._call(self.token.functions.nonces(self.address)))
        return sign_permit(
            self._account, token=domain[4], chain_id=int(domain[3]), spender=spender, value=value,
            nonce=nonce, deadline=deadline, name=domain[1], version=domain[2],
        )

    def pause(self) -> dict[str, Any]:
        return self.transact(self.registry.functions.pause(), "pause")

    def resume(self) -> dict[str, Any]:
        return self.transact(self.registry.functions.resume(), "resume")

    def quit(self) -> dict[str, Any]:
        return self.transact(self.registry.functions.quit(), "quit")

    def update_models(self, add: Sequence[bytes], remove: Sequence[bytes]) -> dict[str, Any]:
        return self.transact(self.registry.functions.updateModels(list(add), list(remove)), "updateModels")

