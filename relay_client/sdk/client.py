"""`CrynuxClient`: what a dApp needs to run tasks on the network, in one object.

    from eth_account import Account
    from relay_client import CrynuxClient

    client = CrynuxClient(rpc_url, "deployments/sepolia.json", relay_url, Account.from_key(key))
    print(client.estimate(fee=10 * 10**18, num_images=1))         # value, queue position
    report = client.generate_image({"base_model": "base:tiny-sd", "prompt": "a red fox",
                                    "task_config": {"seed": 7, "image_width": 64, "image_height": 64}},
                                   fee=10 * 10**18)
    report.result.images[0].save("fox.png")

Each `generate_*` call: checks the balance, uploads the arguments to the relay (signed),
creates the task (with an EIP-2612 permit, or approve + createTask), waits with a progress
display (tqdm, or an `on_progress` callback: queued -> started -> committed -> delivered),
downloads the result files, checks that they hash to the score the relay verified against
the executor's on-chain commitment, and returns PIL images or the response dict.
"""
from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from PIL import Image
from web3.logs import DISCARD

from crynux_common import scores
from crynux_common.deployment import Deployment
from crynux_common.enums import Outcome, TaskStatus, TaskType
from crynux_common.schemas import ImageTaskArgs, TextTaskArgs, encode_task_args

from ..client import RelayClient, RelayConflict, RelayError, RelayNotFound, RelayUnavailable
from ..server.schemas import ResultManifest
from .chain import AppChain, TxRecord
from .errors import (
    CrynuxError,
    InsufficientBalance,
    RelayUnreachable,
    ResultVerificationFailed,
    TaskAborted,
    TaskTimeout,
    TransactionFailed,
)
from .models import ImageResult, Phase, Progress, TaskEstimate, TaskReport, TextResult

log = logging.getLogger("crynux_sdk")

T = TypeVar("T")
ZERO32 = b"\x00" * 32
#: Gas limit floors (unused gas is not paid): createTask may start the task on a node freed
#: between estimate and inclusion; timeout() may settle an audit (slashes, payments).
CREATE_GAS_FLOOR = 600_000
TIMEOUT_GAS_FLOOR = 1_000_000
_STEPS = [Phase.QUEUED, Phase.STARTED, Phase.COMMITTED, Phase.DELIVERED, Phase.SETTLED]
_UNTIL = {"delivered": Phase.DELIVERED, "settled": Phase.SETTLED, "started": Phase.STARTED,
          "committed": Phase.COMMITTED}


class CrynuxClient:
    """One application account on one network: create, wait for, download and cancel tasks.

    rpc_url: JSON-RPC endpoint. deployment: the deployment file (path or Deployment).
    relay_url: the relay's base URL. account: an eth-account LocalAccount (or a hex key).
    use_permit: pay the escrow with an EIP-2612 permit (one transaction) instead of approve.
    poll_interval: seconds between two reads of the task while waiting.
    relay_retry: seconds a relay call is retried while the relay is down or answers 5xx.
    progress: show a tqdm bar while waiting (when no `on_progress` callback is given).
    results_wait: once the task has started, `wait` asks the relay for the results with this
    long-polling window (seconds) instead of sleeping, so a delivery is seen the moment the
    relay has verified and stored it, not when its attestation is mined and polled.
    """

    def __init__(
        self,
        rpc_url: str,
        deployment: Deployment | str | Path,
        relay_url: str,
        account: LocalAccount | str,
        *,
        use_permit: bool = True,
        poll_interval: float = 0.2,
        relay_retry: float = 30.0,
        progress: bool = True,
        receipt_timeout: float = 120.0,
        results_wait: float = 1.0,
    ) -> None:
        if isinstance(account, str):
            account = Account.from_key(account)
        if not isinstance(deployment, Deployment):
            deployment = Deployment.load(deployment)
        self.account = account
        self.chain = AppChain(rpc_url, deployment, account, receipt_timeout=receipt_timeout,
                              poll_latency=min(poll_interval, 0.5))
        self.relay = RelayClient(relay_url, account, timeout=60.0)
        self.use_permit = use_permit
        self.poll_interval = poll_interval
        self.relay_retry = relay_retry
        self.results_wait = results_wait
        self.progress = progress
        self._task_fields = [c["name"] for c in next(
            i for i in self.chain.market.abi if i.get("name") == "getTask")["outputs"][0]["components"]]
        self._last_timeout_try: dict[int, float] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return str(self.account.address)

    def close(self) -> None:
        self.relay.close()

    def __enter__(self) -> CrynuxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads -------------------------------------------------------------------------------

    def balance(self) -> int:
        """CNX (wei) held by the application."""
        return int(self.chain.token.functions.balanceOf(self.address).call())

    def task(self, task_id: int) -> dict[str, Any]:
        """ITaskMarket.TaskInfo of the task as a dict (status as TaskStatus)."""
        raw = self.chain.market.functions.getTask(task_id).call()
        info = dict(zip(self._task_fields, raw))
        info["status"] = TaskStatus(int(info["status"]))
        info["taskType"] = TaskType(int(info["taskType"]))
        return info

    def estimate(self, fee: int, task_type: TaskType | int = TaskType.IMAGE, num_images: int = 1,
                 *, always_audit: bool = False) -> TaskEstimate:
        """Task value V = fee / T and how many queued tasks would be served before this one."""
        tt = TaskType(int(task_type))
        n = num_images if tt == TaskType.IMAGE else 0
        m = self.chain.market.functions
        value = int(m.taskValue(fee, int(tt), n).call())
        return TaskEstimate(
            fee=fee, escrow=fee * 3 if always_audit else fee, estimated_time=int(m.estimatedTime(int(tt), n).call()),
            value=value, queue_position=int(m.queuePosition(value).call()), queue_size=int(m.queueSize().call()),
        )

    def outcome(self, task_id: int) -> Outcome | None:
        """The Outcome of TaskSettled for a started task that settled, else None."""
        logs = self._task_logs("TaskSettled", task_id)
        return Outcome(int(logs[-1]["args"]["outcome"])) if logs else None

    def refunded(self, task_id: int) -> int:
        """CNX (wei) refunded to the creator for this task."""
        return sum(int(e["args"]["amount"]) for e in self._task_logs("TaskRefunded", task_id))

    def task_transactions(self, task_id: int) -> list[dict[str, Any]]:
        """Every market transaction that emitted an event of the task, in order: event names,
        sender, gas used (whoever sent it: application, nodes, relay)."""
        w3 = self.chain.w3
        topic = "0x" + task_id.to_bytes(32, "big").hex()
        logs = w3.eth.get_logs({"address": self.chain.market.address, "fromBlock": self.chain.deployment.block,
                                "toBlock": "latest", "topics": [None, topic]})
        by_tx: dict[str, dict[str, Any]] = {}
        names = {}
        for item in self.chain.market.abi:
            if item.get("type") == "event":
                sig = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
                names[keccak(text=sig)] = item["name"]
        for lg in logs:
            hx = "0x" + bytes(lg["transactionHash"]).hex()
            entry = by_tx.setdefault(hx, {"tx": hx, "block": int(lg["blockNumber"]), "events": []})
            entry["events"].append(names.get(bytes(lg["topics"][0]), "?"))
        for hx, entry in by_tx.items():
            receipt = w3.eth.get_transaction_receipt(hx)
            entry["from"] = receipt["from"]
            entry["gas_used"] = int(receipt["gasUsed"])
        return sorted(by_tx.values(), key=lambda e: e["block"])

    def _task_logs(self, event: str, task_id: int) -> list[Any]:
        ev = getattr(self.chain.market.events, event)
        return list(ev.get_logs(from_block=self.chain.deployment.block, argument_filters={"taskId": task_id}))

    # --- create ------------------------------------------------------------------------------

    def submit_image(self, args: ImageTaskArgs | dict[str, Any], fee: int, **kw: Any) -> TaskReport:
        """Uploads image-task arguments and creates the task; see `submit`."""
        parsed = args if isinstance(args, ImageTaskArgs) else ImageTaskArgs.model_validate(
            {"version": "1.0", **args}, strict=False)
        return self.submit(encode_task_args(parsed), TaskType.IMAGE, parsed.model_ids(),
                           parsed.task_config.num_images, fee, **kw)

    def submit_text(self, args: TextTaskArgs | dict[str, Any], fee: int, **kw: Any) -> TaskReport:
        """Uploads text-task arguments and creates the task; see `submit`."""
        parsed = args if isinstance(args, TextTaskArgs) else TextTaskArgs.model_validate(
            {"version": "1.0", **args}, strict=False)
        return self.submit(encode_task_args(parsed), TaskType.TEXT, parsed.model_ids(), 0, fee, **kw)

    def submit(
        self,
        args: bytes,
        task_type: TaskType | int,
        model_ids: list[str],
        num_images: int,
        fee: int,
        *,
        min_vram: int = 0,
        required_gpu: str | None = None,
        always_audit: bool = False,
    ) -> TaskReport:
        """Uploads the raw argument bytes and creates the task. Raises InsufficientBalance,
        TransactionFailed (e.g. QueueFull) or RelayUnreachable.

        min_vram: minimum VRAM in GB; with `required_gpu` (a GPU name, e.g. for bit-exact text
        results) it is the exact VRAM the node must have, so it must be given then."""
        if required_gpu and not min_vram:
            raise ValueError("required_gpu needs min_vram: the node's exact VRAM in GB")
        tt = TaskType(int(task_type))
        escrow = fee * 3 if always_audit else fee
        self._check_funds(escrow)
        args_hash = keccak(args)
        report = TaskReport(task_id=0, task_type=tt, args_hash="0x" + args_hash.hex(), fee=fee)
        t0 = time.perf_counter()
        self._relay_call(lambda: self.relay.put_args(args))
        report.timings["upload_args_s"] = time.perf_counter() - t0
        req = (int(tt), args_hash, [keccak(text=m) for m in model_ids], min_vram,
               keccak(text=required_gpu) if required_gpu else ZERO32,
               num_images if tt == TaskType.IMAGE else 0, fee, always_audit)
        market = self.chain.market
        t1 = time.perf_counter()
        allowance = int(self.chain.token.functions.allowance(self.address, market.address).call())
        if allowance >= escrow:
            rec, receipt = self.chain.transact(market.functions.createTask(req), "createTask",
                                               min_gas=CREATE_GAS_FLOOR)
        elif self.use_permit:
            deadline = int(time.time()) + 3600
            v, r, s = self.chain.sign_permit(market.address, escrow, deadline)
            rec, receipt = self.chain.transact(
                market.functions.createTaskWithPermit(req, deadline, v, r, s), "createTaskWithPermit",
                min_gas=CREATE_GAS_FLOOR)
        else:
            approve, _ = self.chain.transact(self.chain.token.functions.approve(market.address, escrow), "approve")
            report.txs.append(approve)
            rec, receipt = self.chain.transact(market.functions.createTask(req), "createTask",
                                               min_gas=CREATE_GAS_FLOOR)
        report.txs.append(rec)
        report.timings["create_s"] = time.perf_counter() - t1
        report.timings["created_at"] = time.perf_counter()
        created = market.events.TaskCreated().process_receipt(receipt, errors=DISCARD)
        report.task_id = int(created[0]["args"]["taskId"])
        log.info("task %d created (%s, fee %g CNX, tx %s, gas %d)", report.task_id, tt.name.lower(), fee / 1e18,
                 rec.tx_hash, rec.gas_used)
        return report

    def _check_funds(self, escrow: int) -> None:
        have = self.balance()
        if have < escrow:
            raise InsufficientBalance("CNX", have, escrow, self.address)
        eth = int(self.chain.w3.eth.get_balance(self.address))
        gas_price = int(self.chain.w3.eth.gas_price)
        need = CREATE_GAS_FLOOR * gas_price
        if eth < need:
            raise InsufficientBalance("gas", eth, need, self.address)

    # --- cancel ------------------------------------------------------------------------------

    def cancel(self, task_id: int) -> TxRecord:
        """Cancels a queued task of this application (full refund). TransactionFailed with
        WrongStatus when it has started already."""
        rec, _ = self.chain.transact(self.chain.market.functions.cancel(task_id), f"cancel({task_id})")
        return rec

    # --- wait --------------------------------------------------------------------------------

    def wait(
        self,
        task: int | TaskReport,
        *,
        until: str = "delivered",
        timeout: float = 600.0,
        on_progress: Callable[[Progress], None] | None = None,
        progress: bool | None = None,
        enforce_timeouts: bool = True,
    ) -> dict[str, Any]:
        """Waits for the task to be `delivered` (results downloadable; the default) or `settled`
        (paid, after any audit). Returns the task info; with `results_ready` True when the relay
        served the verified results before the chain showed the delivery (the report's
        `manifest` then holds the file list). Raises TaskAborted when it is refunded,
        cancelled, evicted or expired, TaskTimeout after `timeout` seconds.

        With `enforce_timeouts`, a task whose on-chain deadline has passed is timed out by the
        SDK (anyone may call `timeout`), so a dead node's task is refunded without waiting
        for someone else to do it."""
        report = task if isinstance(task, TaskReport) else None
        task_id = report.task_id if report else int(task)
        target = _UNTIL[until]
        show = self.progress if progress is None else progress
        bar = None
        if on_progress is None and show:
            from tqdm import tqdm

            bar = tqdm(total=4 if target != Phase.SETTLED else 5, desc=f"task {task_id}", unit="step",
                       bar_format="{desc}: {n_fmt}/{total_fmt} {postfix} [{elapsed}]", leave=True)
        start = time.perf_counter()
        base = report.timings.get("created_at", start) if report else start
        seen: Phase | None = None
        try:
            while True:
                info = self.task(task_id)
                status = info["status"]
                phase = self._phase(info)
                if phase != seen:
                    self._on_phase(report, info, phase, start, base, on_progress, bar)
                    seen = phase
                if status.is_final and status != TaskStatus.SUCCESS:
                    if report is not None:
                        report.final_status = status
                    raise TaskAborted(task_id, status, self.outcome(task_id), self.refunded(task_id))
                if phase in _STEPS and _STEPS.index(phase) >= _STEPS.index(target):
                    if report is not None and status.is_final:
                        report.final_status = status
                    return info
                if time.perf_counter() - start > timeout:
                    raise TaskTimeout(task_id, target.value, time.perf_counter() - start, status)
                if enforce_timeouts:
                    self._maybe_timeout(task_id, info)
                if target == Phase.DELIVERED and phase in (Phase.STARTED, Phase.COMMITTED) and self.results_wait > 0:
                    # Long-poll the relay instead of sleeping: it answers the moment it has
                    # verified and stored the delivery (the attestation follows on-chain).
                    left = timeout - (time.perf_counter() - start)
                    manifest = self._poll_results(task_id, max(0.0, min(self.results_wait, left)))
                    if manifest is not None:
                        if report is not None:
                            report.manifest = manifest
                        self._on_phase(report, info, Phase.DELIVERED, start, base, on_progress, bar)
                        return {**info, "results_ready": True}
                    continue
                time.sleep(self.poll_interval)
        finally:
            if bar is not None:
                bar.close()

    def _on_phase(self, report: TaskReport | None, info: dict[str, Any], phase: Phase, start: float, base: float,
                  on_progress: Callable[[Progress], None] | None, bar: Any) -> None:
        now = time.perf_counter()
        executor = info["executor"] if int(info["executor"], 16) else None
        if report is not None:
            for p in _STEPS[: _STEPS.index(phase) + 1] if phase in _STEPS else []:
                report.phase_times.setdefault(p.value, now - base)
            report.executor = executor
        if on_progress is not None:
            on_progress(Progress(report.task_id if report else 0, phase, info["status"], now - start, executor))
        if bar is not None and phase in _STEPS:
            bar.n = _STEPS.index(phase) + 1
            bar.set_postfix_str(phase.value)

    def _poll_results(self, task_id: int, wait: float) -> ResultManifest | None:
        """The relay's manifest if the delivery is (or becomes, within `wait` s) available."""
        try:
            return self.relay.get_results(task_id, wait=wait)
        except (RelayConflict, RelayNotFound):  # not delivered yet / the relay's RPC lags a block
            return None
        except (httpx.TransportError, RelayUnavailable) as exc:
            log.debug("task %d: relay not reachable while waiting: %s", task_id, exc)
            time.sleep(self.poll_interval)
            return None

    @staticmethod
    def _phase(info: dict[str, Any]) -> Phase:
        status: TaskStatus = info["status"]
        if status == TaskStatus.SUCCESS:
            return Phase.SETTLED
        if status.is_final:
            return Phase.SETTLED
        if info["delivered"]:
            return Phase.DELIVERED
        if status in (TaskStatus.COMMITTED, TaskStatus.AUDITING, TaskStatus.DISCLOSING):
            return Phase.COMMITTED
        if status == TaskStatus.STARTED:
            return Phase.STARTED
        if status == TaskStatus.QUEUED:
            return Phase.QUEUED
        return Phase.CREATED

    def _maybe_timeout(self, task_id: int, info: dict[str, Any]) -> None:
        status: TaskStatus = info["status"]
        now = time.time()
        due: list[int] = []
        if status in (TaskStatus.STARTED, TaskStatus.COMMITTED) and not info["delivered"]:
            due.append(int(info["deadline"]))
        if status == TaskStatus.AUDITING:
            due += [int(d) for d in info["auditorDeadlines"] if int(d)]
            if int(info["auditSearchDeadline"]):
                due.append(int(info["auditSearchDeadline"]))
        if status == TaskStatus.DISCLOSING and int(info["discloseDeadline"]):
            due.append(int(info["discloseDeadline"]))
        if not due or now <= min(due) + 1:
            return
        if now - self._last_timeout_try.get(task_id, 0.0) < 2.0:
            return
        self._last_timeout_try[task_id] = now
        try:
            rec, _ = self.chain.transact(self.chain.market.functions.timeout(task_id), f"timeout({task_id})",
                                         min_gas=TIMEOUT_GAS_FLOOR)
            log.info("task %d: a deadline passed; timeout() applied in %s", task_id, rec.tx_hash)
        except TransactionFailed as exc:  # NothingDue (a node did it first, or chain time lags)
            log.debug("task %d: timeout() not applicable: %s", task_id, exc)

    # --- results -----------------------------------------------------------------------------

    def fetch_results(self, task_id: int, task_type: TaskType | int | None = None, *,
                      manifest: ResultManifest | None = None) -> ImageResult | TextResult:
        """Downloads the delivered files and checks them against the score the relay verified
        against the executor's commitment. PIL images for an image task, the dict for text.
        `manifest`: the relay's file list when the caller has it already (`TaskReport.manifest`)."""
        if manifest is None:
            manifest = self._relay_call(lambda: self.relay.get_results(task_id), retry_conflict=True)
        files = [self._relay_call(lambda f=f: self.relay.download_result(task_id, f.index, f.sha256))
                 for f in manifest.files]
        tt = TaskType(int(task_type if task_type is not None else manifest.task_type))
        expected = bytes.fromhex(manifest.score[2:])
        if not expected:
            raise ResultVerificationFailed(f"task {task_id}: the node reported invalid arguments (error score)")
        got = scores.score_for(tt, files)
        if got != expected:
            raise ResultVerificationFailed(
                f"task {task_id}: the files score {got.hex()} but the relay verified {expected.hex()}")
        if tt == TaskType.IMAGE:
            images = []
            for data in files:
                img = Image.open(io.BytesIO(data))
                img.load()
                images.append(img)
            return ImageResult(task_id, images, files, got)
        return TextResult(task_id, json.loads(files[0]), files[0], got)

    def _relay_call(self, fn: Callable[[], T], *, retry_conflict: bool = False) -> T:
        deadline = time.monotonic() + self.relay_retry
        delay = 0.1
        while True:
            try:
                return fn()
            except (httpx.TransportError, RelayUnavailable) as exc:
                last: Exception = exc
            except RelayConflict as exc:  # the relay's view of the chain lags by a block
                if not retry_conflict:
                    raise
                last = exc
            if time.monotonic() > deadline:
                if isinstance(last, RelayError) and not isinstance(last, RelayUnavailable):
                    raise last
                raise RelayUnreachable(f"relay {self.relay.base_url} unreachable for {self.relay_retry:.0f} s: "
                                       f"{last}") from last
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # --- all in one --------------------------------------------------------------------------

    def generate_image(self, args: ImageTaskArgs | dict[str, Any], fee: int, *, timeout: float = 600.0,
                       on_progress: Callable[[Progress], None] | None = None, **kw: Any) -> TaskReport:
        """submit_image + wait (delivered) + fetch_results; `report.result.images` are PIL images.
        A task still queued after `timeout` is cancelled (refund) and TaskTimeout raised."""
        return self._run(self.submit_image(args, fee, **kw), timeout, on_progress)

    def generate_text(self, args: TextTaskArgs | dict[str, Any], fee: int, *, timeout: float = 600.0,
                      on_progress: Callable[[Progress], None] | None = None, **kw: Any) -> TaskReport:
        """submit_text + wait (delivered) + fetch_results; `report.result.response` is the dict."""
        return self._run(self.submit_text(args, fee, **kw), timeout, on_progress)

    def _run(self, report: TaskReport, timeout: float, on_progress: Callable[[Progress], None] | None) -> TaskReport:
        try:
            self.wait(report, timeout=timeout, on_progress=on_progress)
        except TaskTimeout as exc:
            if exc.status != TaskStatus.QUEUED:
                raise  # running: its own deadlines end it (refund on timeout)
            # No node took it in time: get the fee back rather than leave it escrowed.
            try:
                self.cancel(report.task_id)
            except TransactionFailed:  # started meanwhile (WrongStatus): leave it running
                raise exc from None
            report.final_status = TaskStatus.CANCELLED
            raise TaskTimeout(exc.task_id, exc.phase, exc.waited, exc.status, cancelled=True) from None
        t = time.perf_counter()
        report.result = self.fetch_results(report.task_id, report.task_type, manifest=report.manifest)
        report.timings["download_s"] = time.perf_counter() - t
        report.phase_times["downloaded"] = time.perf_counter() - report.timings["created_at"]
        return report


__all__ = ["CrynuxClient", "CrynuxError"]
