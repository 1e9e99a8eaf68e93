"""The application's side of the chain: contracts from the deployment file, signed
transactions from an eth-account LocalAccount, custom-error decoding, EIP-2612 permits."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import function_signature_to_4byte_selector
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted

from crynux_common.deployment import Deployment
from crynux_common.permit import sign_permit

from .errors import CrynuxError, TransactionFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TxRecord:
    """One transaction the SDK sent."""

    what: str
    tx_hash: str
    block: int
    gas_used: int
    seconds: float  # from signing to the receipt


def _abi_type(inp: dict[str, Any]) -> str:
    t = str(inp["type"])
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in inp["components"]) + ")" + t[len("tuple"):]
    return t


class AppChain:
    """Market and token contracts, read calls and signed transactions for one application."""

    def __init__(self, rpc_url: str, deployment: Deployment, account: LocalAccount, *,
                 receipt_timeout: float = 120.0, poll_latency: float = 0.05) -> None:
        self.w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self.deployment = deployment
        self.account = account
        self.market = deployment.contract(self.w3, "TaskMarket")
        self.token = deployment.contract(self.w3, "CNXToken")
        self._receipt_timeout = receipt_timeout
        self._poll_latency = poll_latency
        self._lock = threading.Lock()
        self._next_nonce: int | None = None
        self._errors: dict[bytes, tuple[str, list[str], list[str]]] = {}
        for contract in (self.market, self.token):
            for item in contract.abi:
                if item.get("type") == "error":
                    types = [_abi_type(i) for i in item.get("inputs", [])]
                    sel = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
                    self._errors[sel] = (item["name"], [i["name"] for i in item.get("inputs", [])], types)

    @property
    def address(self) -> str:
        return str(self.account.address)

    # --- errors -------------------------------------------------------------------------------

    def decode_error(self, data: Any) -> tuple[str | None, dict[str, Any]]:
        if isinstance(data, str) and data.startswith("0x"):
            raw = bytes.fromhex(data[2:])
        elif isinstance(data, (bytes, bytearray)):
            raw = bytes(data)
        else:
            return None, {}
        entry = self._errors.get(raw[:4])
        if entry is None:
            return None, {}
        name, names, types = entry
        try:
            values = abi_decode(types, raw[4:])
        except Exception:  # malformed revert data: the name is still useful
            return name, {}
        return name, dict(zip(names, values))

    # --- transactions -------------------------------------------------------------------------

    def transact(self, fn: Any, what: str, *, min_gas: int = 0) -> tuple[TxRecord, dict[str, Any]]:
        """Sends `fn` from the application's account and waits for its receipt.

        The gas estimate runs first, so a call that would revert raises TransactionFailed with
        the contract's custom error before anything is sent. The limit is 1.5 x the estimate,
        at least `min_gas`: what a call costs can grow between estimate and inclusion (a node
        freed meanwhile makes createTask start the task; timeout() may settle an audit)."""
        t0 = time.perf_counter()
        with self._lock:
            try:
                gas = fn.estimate_gas({"from": self.address}, block_identifier="pending")
            except (ContractCustomError, ContractLogicError) as exc:
                name, args = self.decode_error(getattr(exc, "data", None))
                raise TransactionFailed(what, name, args) from None
            pending = int(self.w3.eth.get_transaction_count(self.address, "pending"))
            nonce = max(pending, self._next_nonce or 0)
            tx = fn.build_transaction({"from": self.address, "nonce": nonce, "gas": max(int(gas * 1.5) + 30_000, min_gas)})
            signed = self.account.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            self._next_nonce = nonce + 1
        hx = "0x" + bytes(tx_hash).hex()
        try:
            receipt = dict(self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self._receipt_timeout, poll_latency=self._poll_latency))
        except TimeExhausted as exc:
            with self._lock:
                self._next_nonce = None
            raise CrynuxError(f"{what}: no receipt for {hx} after {self._receipt_timeout:.0f} s") from exc
        if int(receipt["status"]) != 1:
            try:
                fn.call({"from": self.address}, block_identifier=receipt["blockNumber"])
                name, args = None, {}
            except (ContractCustomError, ContractLogicError) as exc:
                name, args = self.decode_error(getattr(exc, "data", None))
            raise TransactionFailed(what, name, args, hx)
        record = TxRecord(what, hx, int(receipt["blockNumber"]), int(receipt["gasUsed"]),
                          time.perf_counter() - t0)
        log.debug("%s mined in block %d (%s, gas %d)", what, record.block, hx, record.gas_used)
        return record, receipt

    # --- permit -------------------------------------------------------------------------------

    def sign_permit(self, spender: str, value: int, deadline: int) -> tuple[int, bytes, bytes]:
        """An EIP-2612 permit of the CNX token for `spender`: (v, r, s)."""
        _fields, name, version, chain_id, verifying, _salt, _ext = self.token.functions.eip712Domain().call()
        nonce = int(self.token.functions.nonces(self.address).call())
        return sign_permit(
            self.account, token=verifying, chain_id=chain_id, spender=spender, value=value,
            nonce=nonce, deadline=deadline, name=name, version=version,
        )
