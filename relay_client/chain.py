"""The relay's view of the chain: a small typed gateway over web3.py.

The server depends only on the :class:`TaskChain` protocol (read a task, read a
commitment, attest a delivery, a few statistics); :class:`Web3TaskChain` implements it
against the deployed TaskMarket, with the relay's own key for ``attestDelivery``.

The deployment file is the project's (``crynux_common.deployment.Deployment``, written by
the deploy script)::

    {"network": "local", "chain_id": 31337, "block": 0,
     "contracts": {"TaskMarket": {"address": "0x...", "abi": [...]},
                   "NodeRegistry": {"address": "0x...", "abi": [...]}, ...}}

An entry without ``abi`` takes it from Ape's compiled artifacts (``.build/__local__.json``,
``contractTypes.<Name>.abi``); a flat ``{"TaskMarket": "0x..."}`` is accepted too.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3

log = logging.getLogger(__name__)

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
MARKET_NAMES = ("TaskMarket", "taskMarket", "market", "task_market")
REGISTRY_NAMES = ("NodeRegistry", "nodeRegistry", "registry", "node_registry")


class ChainError(Exception):
    """A chain operation failed."""


class ChainUnavailable(ChainError):
    """The RPC endpoint cannot be reached or answered with a transport error (transient)."""


class AttestRejected(ChainError):
    """The market refused the attestation (a revert): retrying will not help."""


class DeploymentError(ChainError):
    """The deployment file or the compiled artifacts lack what the relay needs."""


@dataclass(frozen=True)
class TaskView:
    """The fields of a market task the relay uses (the rest is in ``raw``)."""

    task_id: int
    creator: str
    task_type: int
    status: int
    args_hash: bytes
    fee: int
    num_images: int
    executor: str
    auditors: tuple[str, ...]
    delivered: bool
    drawn: bool
    start_time: int = 0  # when the executor was assigned (0: queued)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def is_assigned(self, node: str) -> bool:
        """True when ``node`` is the executor or one of the auditors."""
        n = node.lower()
        return n != ZERO_ADDRESS and (n == self.executor.lower() or any(n == a.lower() for a in self.auditors))


@dataclass(frozen=True)
class AttestResult:
    task_id: int
    tx_hash: str | None  # None when the task was already marked delivered on-chain
    block_number: int | None
    already_delivered: bool
    gas_used: int | None = None  # of the mined attestation


@dataclass(frozen=True)
class RelayFunds:
    """The relay account's balance and the chain's current gas price (wei)."""

    balance_wei: int
    gas_price_wei: int


class TaskChain(Protocol):
    """What the relay server needs from the chain."""

    def get_task(self, task_id: int) -> TaskView | None:
        """The task, or None when the market has no such task. Raises ChainUnavailable."""
        ...

    def commitment_of(self, task_id: int, node: str) -> bytes:
        """The node's 32-byte result commitment for the task (zero bytes if none)."""
        ...

    def attest_delivery(self, task_id: int, *, deadline: float | None = None,
                        on_sent: Callable[[str], None] | None = None) -> AttestResult:
        """Sends ``attestDelivery(taskId)`` with the relay's key and waits until it is mined,
        retrying transient failures until ``deadline`` (unix time; None = a default);
        ``on_sent(tx_hash)`` is called each time the chain accepts one of its transactions.
        Raises AttestRejected on a revert, ChainUnavailable when the deadline passes."""
        ...

    def stats(self) -> dict[str, int]:
        """Public numbers read from the chain (block number, task count ...)."""
        ...

    def chain_time(self) -> int:
        """The timestamp of the latest block. Raises ChainUnavailable."""
        ...

    @property
    def relay_address(self) -> str: ...


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _decode(value: Any, abi_out: dict[str, Any]) -> Any:
    """Turns a web3 tuple for an ABI struct into a dict keyed by snake_case field names."""
    if abi_out.get("type", "").startswith("tuple") and "components" in abi_out:
        if abi_out["type"] == "tuple":
            return {
                _snake(c["name"]): _decode(v, c) for c, v in zip(abi_out["components"], value, strict=True)
            }
        inner = dict(abi_out, type=abi_out["type"][: abi_out["type"].rindex("[")])
        return [_decode(v, inner) for v in value]
    return value


def load_compiled_abi(build_dir: Path, contract: str) -> list[dict[str, Any]]:
    """The ABI of ``contract`` from Ape's compiled artifacts in ``build_dir``."""
    manifest = build_dir / "__local__.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        ctype = data.get("contractTypes", {}).get(contract)
        if ctype and ctype.get("abi"):
            return list(ctype["abi"])
    single = build_dir / "contract_types" / f"{contract}.json"  # older Ape layout
    if single.is_file():
        return list(json.loads(single.read_text())["abi"])
    raise DeploymentError(f"no compiled ABI of {contract} in {build_dir} (run `ape compile`)")


@dataclass(frozen=True)
class Deployment:
    market_address: str
    market_abi: list[dict[str, Any]]
    chain_id: int | None = None
    registry_address: str | None = None
    registry_abi: list[dict[str, Any]] | None = None


def _find(contracts: dict[str, Any], names: tuple[str, ...]) -> tuple[str | None, list[dict[str, Any]] | None]:
    for name in names:
        entry = contracts.get(name)
        if entry is None:
            continue
        if isinstance(entry, str):
            return entry, None
        return entry.get("address"), entry.get("abi")
    return None, None


def load_deployment(path: Path, build_dir: Path | None = None) -> Deployment:
    """Reads a deployment file; ABIs missing from it come from ``build_dir``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DeploymentError(f"cannot read the deployment file {path}: {exc}") from exc
    contracts = data.get("contracts", data)
    market, market_abi = _find(contracts, MARKET_NAMES)
    if not market:
        raise DeploymentError(f"{path} names no TaskMarket address")
    registry, registry_abi = _find(contracts, REGISTRY_NAMES)
    build = Path(build_dir) if build_dir else Path(".build")
    if market_abi is None:
        market_abi = load_compiled_abi(build, "TaskMarket")
    if registry and registry_abi is None:
        try:
            registry_abi = load_compiled_abi(build, "NodeRegistry")
        except DeploymentError:
            registry_abi = None
    chain_id = data.get("chain_id", data.get("chainId"))
    return Deployment(
        market_address=to_checksum_address(market),
        market_abi=market_abi,
        chain_id=int(chain_id) if chain_id is not None else None,
        registry_address=to_checksum_address(registry) if registry else None,
        registry_abi=registry_abi,
    )


class _Reverted(Exception):
    """An eth_call or eth_estimateGas reverted."""


def _abi_type(item: dict[str, Any]) -> str:
    """The canonical ABI type string of an input/output (tuples spelled out)."""
    t = str(item["type"])
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + t[len("tuple"):]
    return t


class _AbiFunction:
    """One contract function, encoded and decoded with eth_abi (much cheaper than web3's
    contract objects, which re-process the ABI on every call)."""

    def __init__(self, item: dict[str, Any]) -> None:
        self.name = str(item["name"])
        self.inputs = [_abi_type(i) for i in item.get("inputs", [])]
        self.outputs_abi = list(item.get("outputs", []))
        self.outputs = [_abi_type(o) for o in self.outputs_abi]
        self.selector = keccak(text=f"{self.name}({','.join(self.inputs)})")[:4]

    def calldata(self, *args: Any) -> str:
        return "0x" + (self.selector + abi_encode(self.inputs, list(args))).hex()

    def decode(self, result: str) -> tuple[Any, ...]:
        data = bytes.fromhex(result.removeprefix("0x"))
        if not data and self.outputs:
            raise ChainUnavailable(f"{self.name}: empty answer (no contract at the configured address?)")
        try:
            return tuple(abi_decode(self.outputs, data))
        except Exception as exc:
            raise ChainUnavailable(f"{self.name}: undecodable answer ({exc}): wrong ABI or address?") from exc


def _functions(abi: list[dict[str, Any]] | None) -> dict[str, _AbiFunction]:
    return {str(i["name"]): _AbiFunction(i) for i in abi or [] if i.get("type") == "function"}


# AccessControlUnauthorizedAccount(address,bytes32): the relay's key lacks RELAY_ROLE.
_ACCESS_CONTROL_SELECTOR = keccak(text="AccessControlUnauthorizedAccount(address,bytes32)")[:4].hex()

# Parameterless view functions whose values the public statistics show, when the market has them.
_STAT_FUNCTIONS = (
    "nextTaskId", "taskCount", "queueSize", "queueLength", "auditPool", "pendingAuditCount",
)
# INodeRegistry.NodeStatus order; countsByStatus()[0] counts every address that ever joined.
_NODE_STATUS_LABELS = ("joined", "available", "busy", "pending_pause", "paused", "pending_quit", "quit")
_REGISTRY_STAT_FUNCTIONS = ("nodeCount", "availableNodeCount", "totalNodes", "activeNodeCount")


class Web3TaskChain:
    """:class:`TaskChain` over JSON-RPC (web3.py's HTTP provider) with the relay's local key."""

    def __init__(
        self,
        rpc_url: str,
        deployment: Deployment,
        account: LocalAccount | None,
        *,
        request_timeout: float = 10.0,
        receipt_timeout: float = 60.0,
        attest_deadline: float = 120.0,
        poll_interval: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": request_timeout}))
        self.deployment = deployment
        self._market_fns = _functions(deployment.market_abi)
        self._registry_fns = _functions(deployment.registry_abi) if deployment.registry_address else {}
        for name in ("getTask", "commitmentOf", "attestDelivery"):
            if name not in self._market_fns:
                raise DeploymentError(f"the TaskMarket ABI has no function {name}")
        self._account = account
        self._receipt_timeout = receipt_timeout
        self._attest_deadline = attest_deadline
        self._poll = poll_interval
        self._sleep = sleep
        self._send_lock = threading.Lock()
        self._next_nonce: int | None = None
        self._chain_id: int | None = deployment.chain_id
        self._rpc_url = rpc_url
        self._request_id = 0

    # --- JSON-RPC -------------------------------------------------------------------------

    def _rpc(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC request; ChainUnavailable on transport errors, _Reverted on reverts,
        ValueError on other JSON-RPC errors."""
        try:
            response = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        except Exception as exc:
            raise ChainUnavailable(f"{method} failed: {exc}") from exc
        error = response.get("error")
        if error:
            message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
            code = error.get("code") if isinstance(error, dict) else None
            if code == 3 or "revert" in message.lower():
                raise _Reverted(f"{message} {error.get('data', '') if isinstance(error, dict) else ''}".strip())
            raise ValueError(f"{method}: JSON-RPC error {code}: {message}")
        return response.get("result")

    def _call(self, fns: dict[str, _AbiFunction], address: str, name: str, *args: Any) -> tuple[Any, ...]:
        fn = fns[name]
        result = self._rpc("eth_call", [{"to": address, "data": fn.calldata(*args)}, "latest"])
        return fn.decode(result)

    @property
    def relay_address(self) -> str:
        return self._account.address if self._account else ZERO_ADDRESS

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self._rpc("eth_chainId", []), 16)
        return self._chain_id

    def describe(self) -> str:
        return f"TaskMarket {self.deployment.market_address} via {self._rpc_url}"

    # --- reads ----------------------------------------------------------------------------

    def get_task(self, task_id: int) -> TaskView | None:
        if task_id < 0 or task_id >= 2**256:
            return None
        try:
            value = self._call(self._market_fns, self.deployment.market_address, "getTask", task_id)
        except _Reverted:
            return None  # a market that reverts for unknown ids
        except ValueError as exc:
            raise ChainUnavailable(str(exc)) from exc
        outputs = self._market_fns["getTask"].outputs_abi
        if len(outputs) == 1:
            fields = _decode(value[0], outputs[0])
        else:
            fields = {_snake(o["name"]): _decode(v, o) for o, v in zip(outputs, value, strict=True)}
        creator = fields.get("creator", ZERO_ADDRESS)
        if int(creator, 16) == 0:
            return None  # a zeroed struct: no such task
        auditors = fields.get("auditors", ())
        return TaskView(
            task_id=task_id,
            creator=to_checksum_address(creator),
            task_type=int(fields.get("task_type", 0)),
            status=int(fields.get("status", 0)),
            args_hash=bytes(fields.get("args_hash", b"")),
            fee=int(fields.get("fee", 0)),
            num_images=int(fields.get("num_images", 0)),
            executor=to_checksum_address(fields.get("executor", ZERO_ADDRESS)),
            auditors=tuple(to_checksum_address(a) for a in auditors),
            delivered=bool(fields.get("delivered", False)),
            drawn=bool(fields.get("drawn", False)),
            start_time=int(fields.get("start_time", 0)),
            raw=fields,
        )

    def commitment_of(self, task_id: int, node: str) -> bytes:
        try:
            (value,) = self._call(
                self._market_fns, self.deployment.market_address, "commitmentOf", task_id,
                to_checksum_address(node),
            )
        except _Reverted:
            return b"\x00" * 32
        except ValueError as exc:
            raise ChainUnavailable(str(exc)) from exc
        return bytes(value)

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            out["block_number"] = int(self._rpc("eth_blockNumber", []), 16)
            out["chain_id"] = self.chain_id()
        except (ValueError, ChainUnavailable) as exc:
            raise ChainUnavailable(f"cannot read the chain: {exc}") from exc
        sources = [(self._market_fns, self.deployment.market_address, _STAT_FUNCTIONS)]
        if self.deployment.registry_address:
            sources.append((self._registry_fns, self.deployment.registry_address, _REGISTRY_STAT_FUNCTIONS))
        for fns, address, names in sources:
            for name in names:
                if name in fns and not fns[name].inputs:
                    try:
                        out[_snake(name)] = int(self._call(fns, address, name)[0])
                    except Exception as exc:  # a statistic is not worth failing the request
                        log.debug("stat %s failed: %s", name, exc)
        if "countsByStatus" in self._registry_fns and self.deployment.registry_address:
            try:
                (counts,) = self._call(self._registry_fns, self.deployment.registry_address, "countsByStatus")
                for label, count in zip(_NODE_STATUS_LABELS, counts):
                    out[f"nodes_{label}"] = int(count)
            except Exception as exc:
                log.debug("stat countsByStatus failed: %s", exc)
        return out

    def chain_time(self) -> int:
        try:
            block = self._rpc("eth_getBlockByNumber", ["latest", False])
        except ValueError as exc:
            raise ChainUnavailable(f"cannot read the latest block: {exc}") from exc
        return int(block["timestamp"], 16)

    def has_relay_role(self) -> bool | None:
        """Whether the relay's key holds RELAY_ROLE (None when the market cannot tell)."""
        if self._account is None or "hasRole" not in self._market_fns or "RELAY_ROLE" not in self._market_fns:
            return None
        market = self.deployment.market_address
        (role,) = self._call(self._market_fns, market, "RELAY_ROLE")
        (has,) = self._call(self._market_fns, market, "hasRole", role, self._account.address)
        return bool(has)

    def relay_funds(self) -> RelayFunds | None:
        """The relay account's balance and the gas price (None without a key)."""
        if self._account is None:
            return None
        try:
            balance = int(self._rpc("eth_getBalance", [self._account.address, "latest"]), 16)
            price = int(self._rpc("eth_gasPrice", []), 16)
        except ValueError as exc:
            raise ChainUnavailable(f"cannot read the relay's balance: {exc}") from exc
        return RelayFunds(balance, price)

    # --- attestation ----------------------------------------------------------------------

    def _fees(self) -> dict[str, int]:
        block = self._rpc("eth_getBlockByNumber", ["latest", False])
        base = block.get("baseFeePerGas") if block else None
        if base is None:
            return {"gasPrice": int(self._rpc("eth_gasPrice", []), 16)}
        try:
            tip = int(self._rpc("eth_maxPriorityFeePerGas", []), 16)
        except ValueError:
            tip = 10**9
        return {"maxFeePerGas": 2 * int(base, 16) + tip, "maxPriorityFeePerGas": tip}

    def _send_attestation(self, task_id: int) -> str:
        assert self._account is not None
        sender = self._account.address
        to = self.deployment.market_address
        data = self._market_fns["attestDelivery"].calldata(task_id)
        with self._send_lock:
            pending = int(self._rpc("eth_getTransactionCount", [sender, "pending"]), 16)
            nonce = max(pending, self._next_nonce or 0)
            try:
                # Estimated against the pending block: the delivery may arrive in the block of the
                # executor's commit, and the draw needs the hash of that block (next block on).
                gas = int(self._rpc("eth_estimateGas", [{"from": sender, "to": to, "data": data}, "pending"]), 16)
            except _Reverted as exc:
                if _ACCESS_CONTROL_SELECTOR in str(exc):
                    # Not final: governance may grant the role; the worker keeps retrying.
                    raise ChainError(f"the relay {sender} lacks RELAY_ROLE on the market: {exc}") from exc
                raise AttestRejected(f"attestDelivery({task_id}) would revert: {exc}") from exc
            tx: dict[str, Any] = {
                "chainId": self.chain_id(), "nonce": nonce, "to": to, "data": data, "value": 0,
                "gas": int(gas * 1.25) + 20_000, **self._fees(),
            }
            signed = self._account.sign_transaction(tx)
            tx_hash = self._rpc("eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()])
            self._next_nonce = nonce + 1
        return str(tx_hash)

    def _wait_receipt(self, tx_hash: str, timeout: float) -> dict[str, Any]:
        end = time.time() + timeout
        while True:
            receipt = self._rpc("eth_getTransactionReceipt", [tx_hash])
            if receipt:
                return dict(receipt)
            if time.time() >= end:
                raise ChainUnavailable(f"{tx_hash} not mined within {timeout:.0f} s")
            self._sleep(self._poll)

    def attest_delivery(self, task_id: int, *, deadline: float | None = None,
                        on_sent: Callable[[str], None] | None = None) -> AttestResult:
        if self._account is None:
            raise ChainError("the relay has no key: it cannot attest deliveries")
        end = deadline if deadline is not None else time.time() + self._attest_deadline
        backoff = 0.25
        last: Exception | None = None
        while True:
            try:
                task = self.get_task(task_id)
                if task is None:
                    raise AttestRejected(f"task {task_id} does not exist")
                if task.delivered:
                    return AttestResult(task_id, None, None, already_delivered=True)
                tx_hash = self._send_attestation(task_id)
                log.info("attestDelivery(%d) sent: %s", task_id, tx_hash)
                if on_sent is not None:
                    on_sent(tx_hash)
                receipt = self._wait_receipt(tx_hash, max(1.0, min(self._receipt_timeout, end - time.time())))
                block = int(receipt["blockNumber"], 16)
                if int(receipt["status"], 16) != 1:
                    # Reverted when mined (a race with a timeout or another attestation).
                    again = self.get_task(task_id)
                    if again is not None and again.delivered:
                        return AttestResult(task_id, None, None, already_delivered=True)
                    raise AttestRejected(f"attestDelivery({task_id}) reverted in tx {tx_hash}")
                gas_used = int(receipt.get("gasUsed", "0x0"), 16) or None
                log.info("attestDelivery(%d) mined in block %d (gas %s)", task_id, block, gas_used)
                return AttestResult(task_id, tx_hash, block, already_delivered=False, gas_used=gas_used)
            except AttestRejected:
                raise
            except (ChainUnavailable, ValueError) as exc:
                # ValueError: JSON-RPC errors such as "nonce too low" or "underpriced": resync, retry.
                last = exc
                with self._send_lock:
                    self._next_nonce = None
                log.warning("attestDelivery(%d) not mined yet (%s); retrying", task_id, exc)
            if time.time() + backoff > end:
                raise ChainUnavailable(f"attestDelivery({task_id}) not mined before the deadline: {last}")
            self._sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def load_account(key_file: Path | None, env_value: str | None) -> LocalAccount | None:
    """The relay's key from a file (hex private key) or an environment value."""
    raw: str | None = None
    if key_file is not None:
        raw = Path(key_file).read_text().strip()
    elif env_value:
        raw = env_value.strip()
    if not raw:
        return None
    return Account.from_key(raw)
