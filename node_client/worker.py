"""The protocol loop of a node: notice tasks, execute, commit, deliver, disclose.

One pass (`tick`) does, in order:
1. scan the market's events since the last pass: TaskStarted / AuditorAssigned naming this
   node add a journal entry; DisclosureOpened for a journal task wakes it;
2. every few passes, reconcile with the chain: currentTask(node) (a missed event), the
   node's status (pause, quit) and every open journal task;
3. take the engine's reply if it has one (result -> files, score, salt and commitment in
   the journal *before* the commit transaction);
4. move every woken or active journal task one step on: fetch the arguments (checked against
   the on-chain argsHash) and start the engine; commit; upload (executor); disclose when the
   audit asks for it; close it when the task is final.

The chain is the truth: each step re-reads getTask, so a restart (or a missed event) only
delays things. Inference runs in a child process (node_client.engine_process) so the loop
keeps disclosing while a task computes and survives any crash of the engine.

Failures of this node (InferenceFailure, a dead engine) never produce a commitment: the
engine is restarted and the task retried once more; then it is left to time out. Invalid
arguments produce the error score like any other result; so does a model name that cannot
exist (path traversal, bad characters: crynux_common.schemas.check_model_name). A
well-formed model this node does not hold and may not download (ModelUnavailable) is a
failure of this node, not of the task: nothing is committed (see `_engine_failed`).

SIGTERM / SIGINT: pause on-chain at once (no new task is assigned), finish the current task,
exit. A second signal exits immediately (the journal keeps everything needed).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import keccak

from crynux_common import scores
from crynux_common.enums import NodeStatus, TaskStatus
from crynux_common.schemas import ArgsError, TaskType, canonical_json, parse_task_args
from node_client.chain import ChainUnavailable, NodeChain, TaskInfo, TxReverted
from node_client.config import NodeConfig
from node_client.engine_process import EngineDied, EngineProcess, EngineReply, EngineRequest
from node_client.journal import Journal, JournalEntry, Role, Stage

log = logging.getLogger("crynux_node")

#: TEST ONLY: the node SIGKILLs itself at this point (see `_test_crash_point`).
CRASH_ENV = "CRYNUX_NODE_TEST_CRASH_AT"
#: TEST ONLY: a file naming the crash point; armed by writing it, disarmed when it fires.
CRASH_FILE_ENV = "CRYNUX_NODE_TEST_CRASH_FILE"
CRASH_POINTS = ("computed", "commit_mined", "uploaded")

_META_CURSOR = "event_cursor"
_META_PAUSED_BY_LOOP = "paused_by_loop"


def _test_crash_point(name: str) -> None:
    """TEST ONLY: die like a power cut at this point if $CRYNUX_NODE_TEST_CRASH_AT names it, or
    if the file named by $CRYNUX_NODE_TEST_CRASH_FILE does (the file is removed first, so the
    restarted node does not die again). Neither variable is set on a real node."""
    armed = os.environ.get(CRASH_ENV) == name
    crash_file = os.environ.get(CRASH_FILE_ENV)
    if not armed and crash_file:
        try:
            armed = Path(crash_file).read_text().strip() == name
        except OSError:
            armed = False
        if armed:
            Path(crash_file).unlink(missing_ok=True)
    if armed:
        log.warning("test hook: killing the node process at %r", name)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _Fetched:
    """What the loop holds in memory for a task it is computing."""

    request: EngineRequest
    started: float  # monotonic


class Worker:
    """The node's protocol loop. `run()` returns the process exit code."""

    def __init__(
        self,
        cfg: NodeConfig,
        chain: NodeChain,
        relay: Any,  # relay_client.client.RelayClient
        journal: Journal,
        engine: EngineProcess,
    ) -> None:
        self.cfg = cfg
        self.chain = chain
        self.relay = relay
        self.journal = journal
        self.engine = engine
        self.address = chain.address
        self._stop = threading.Event()
        self._interrupt = threading.Event()  # wakes the loop's wait early
        self._signals = 0
        self._paused_for_stop = False
        self._wake: set[int] = set()
        self._retry_at: dict[int, float] = {}
        self._backoff: dict[int, float] = {}
        self._fetched: dict[int, _Fetched] = {}
        self._seen_block: dict[int, int] = {}
        self._ticks = 0
        self._status: NodeStatus | None = None
        self._cursor: int | None = None
        self._results = cfg.results_dir
        self._results.mkdir(parents=True, exist_ok=True)

    # ================================================================ lifecycle

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self._signals += 1
            if self._signals > 1:
                log.warning("second signal: exiting now (the journal keeps open tasks)")
                raise SystemExit(130)
            log.info("%s: finishing the current task, pausing on-chain, then exiting", signal.Signals(signum).name)
            self._stop.set()
            self._interrupt.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request_stop(self) -> None:
        self._stop.set()
        self._interrupt.set()

    def run(self) -> int:
        info = self.chain.node_info()
        self._status = info.status
        log.info("node %s: status %s, stake %.1f CNX, %s", self.address, info.status.name,
                 info.stake / 1e18, self.chain.describe())
        if info.status == NodeStatus.NONE:
            log.error("this account has not joined the network: run `crynux-node join` first")
            return 2
        if info.status == NodeStatus.QUIT and not self.journal.open_entries():
            log.error("this node has quit the network and owes nothing: nothing to do")
            return 2
        self._maybe_auto_resume(info.status)
        cursor = self.journal.get_meta(_META_CURSOR)
        self._cursor = int(cursor) if cursor is not None else self.chain.block_number()
        for e in self.journal.open_entries():
            log.info("resuming task %d [%s] at stage %s", e.task_id, e.role.value, e.stage.value)
            self._wake.add(e.task_id)
        try:
            self.engine.launch()  # torch loads in the background while the loop works
            while True:
                try:
                    self.tick()
                except ChainUnavailable as exc:
                    log.warning("chain unavailable: %s; retrying in %.0f s", exc, self.cfg.poll_interval)
                except _Retry as exc:
                    log.warning("%s", exc)
                except Exception:  # keep the loop alive; the journal and the chain are the truth
                    log.exception("unexpected error in the loop; continuing")
                    self._interrupt.wait(self.cfg.poll_interval)
                try:
                    if self._should_exit():
                        break
                except ChainUnavailable as exc:
                    log.warning("chain unavailable: %s", exc)
                self._wait()
        finally:
            self.engine.stop(kill=True)
        self._report_exit()
        return 0

    def _maybe_auto_resume(self, status: NodeStatus) -> None:
        if self.journal.get_meta(_META_PAUSED_BY_LOOP) != "1":
            return
        if status in (NodeStatus.PAUSED, NodeStatus.PENDING_PAUSE) and self.cfg.auto_resume:
            log.info("the loop paused this node at its last shutdown: resuming")
            try:
                self.chain.resume()
            except TxReverted as exc:
                log.warning("could not resume: %s", exc)
            self._status = self.chain.node_status()
        self.journal.set_meta(_META_PAUSED_BY_LOOP, None)

    def _wait(self) -> None:
        if self.engine.starting and self._needs_engine():
            try:
                if self.engine.ready(self.cfg.poll_interval):
                    self._wake.update(e.task_id for e in self.journal.open_entries() if e.stage == Stage.ASSIGNED)
            except EngineDied as exc:
                self._engine_start_failed(exc)
            return
        if self.engine.busy_with is not None:
            try:
                reply = self.engine.poll(self.cfg.poll_interval)
            except EngineDied as exc:
                self._engine_failed(self.engine_task(), f"engine died: {exc}", restart=True)
                return
            if reply is not None:
                self._on_reply(reply)
        else:
            now = time.monotonic()
            if not any(self._retry_at.get(t, 0.0) <= now for t in self._wake):
                self._interrupt.wait(self.cfg.poll_interval)
                self._interrupt.clear()

    def _needs_engine(self) -> bool:
        return any(e.stage == Stage.ASSIGNED for e in self.journal.open_entries())

    def _engine_start_failed(self, exc: Exception) -> None:
        log.error("the engine process failed to start: %s; trying again", exc)
        self.engine.stop(kill=True)
        self._interrupt.wait(self.cfg.poll_interval)
        self.engine.launch()

    def engine_task(self) -> int:
        busy = self.engine.busy_with
        return busy.task_id if busy else 0

    def _should_exit(self) -> bool:
        if self._status == NodeStatus.QUIT and not self.journal.open_entries():
            log.info("the node has quit and owes nothing more: exiting")
            return True
        if not self._stop.is_set():
            return False
        if not self._paused_for_stop:
            self._pause_for_stop()
        if self.engine.busy_with is not None:
            return False
        if any(self._is_active(e) for e in self.journal.open_entries()):
            return False
        return self.chain.current_task() == 0

    def _pause_for_stop(self) -> None:
        self._paused_for_stop = True
        status = self.chain.node_status()
        if status in (NodeStatus.AVAILABLE, NodeStatus.BUSY):
            self.journal.set_meta(_META_PAUSED_BY_LOOP, "1")
            try:
                self.chain.pause()
            except TxReverted as exc:
                log.warning("could not pause: %s", exc)
            self._status = self.chain.node_status()
            log.info("paused on-chain (status %s): no new task will be assigned", self._status.name)

    def _report_exit(self) -> None:
        owed = [e for e in self.journal.open_entries() if e.stage in (Stage.COMMITTED, Stage.DELIVERED)]
        for e in owed:
            log.warning("task %d [%s] may still need a disclosure: start the node again before its "
                        "disclosure deadline or the stake is slashed", e.task_id, e.role.value)
        log.info("exiting; journal: %s", self.journal.summary())

    # ================================================================ one pass

    def tick(self) -> None:
        self._ticks += 1
        if self.engine.starting:
            try:
                self.engine.ready(0)
            except EngineDied as exc:
                self._engine_start_failed(exc)
        self._scan_events()
        if self._ticks == 1 or self._ticks % self.cfg.reconcile_every == 0:
            self._reconcile()
        if self.engine.busy_with is not None:
            try:
                reply = self.engine.poll(0)
            except EngineDied as exc:
                self._engine_failed(self.engine_task(), f"engine died: {exc}", restart=True)
                reply = None
            if reply is not None:
                self._on_reply(reply)
            self._check_hang()
        now = time.monotonic()
        open_entries = self.journal.open_entries()
        self._wake &= {e.task_id for e in open_entries}
        for entry in open_entries:
            tid = entry.task_id
            if tid not in self._wake and not self._is_active(entry):
                continue
            if self._retry_at.get(tid, 0) > now:
                continue
            self._wake.discard(tid)
            try:
                self._step(entry)
                self._backoff.pop(tid, None)
                self._retry_at.pop(tid, None)
            except (ChainUnavailable, _Retry) as exc:
                self._later(tid, str(exc))
            except Exception as exc:  # a bug or an unexpected answer: keep the loop alive
                log.exception("task %d: unexpected error at stage %s", tid, entry.stage.value)
                self._later(tid, f"{type(exc).__name__}: {exc}")

    def _later(self, task_id: int, reason: str) -> None:
        delay = min(self._backoff.get(task_id, self.cfg.retry_backoff / 2) * 2, 30.0)
        self._backoff[task_id] = delay
        self._retry_at[task_id] = time.monotonic() + delay
        self._wake.add(task_id)
        log.warning("task %d: %s; retrying in %.1f s", task_id, reason, delay)

    def _scan_events(self) -> None:
        assert self._cursor is not None
        head = self.chain.block_number()
        for _ in range(50):  # bounded catch-up per pass
            if self._cursor > head:
                break
            events, last = self.chain.poll_events(self._cursor, head)
            for ev in events:
                if ev.name in ("TaskStarted", "AuditorAssigned"):
                    role = Role.EXECUTOR if ev.name == "TaskStarted" else Role.AUDITOR
                    self._seen_block[ev.task_id] = ev.block
                    entry, created = self.journal.add_assigned(ev.task_id, role)
                    if created:
                        log.info("task %d [%s]: assigned in block %d", ev.task_id, role.value, ev.block)
                    self._wake.add(ev.task_id)
                elif ev.name == "DisclosureOpened":
                    entry = self.journal.get(ev.task_id)
                    if entry is not None and entry.stage != Stage.DONE:
                        log.info("task %d [%s]: disclosure opened (block %d)", ev.task_id, entry.role.value, ev.block)
                        self._wake.add(ev.task_id)
            self._cursor = last + 1
            self.journal.set_meta(_META_CURSOR, str(self._cursor))

    def _reconcile(self) -> None:
        status = self.chain.node_status()
        if status != self._status:
            log.info("node status %s -> %s", self._status.name if self._status else "?", status.name)
            self._status = status
        current = self.chain.current_task()
        if current and self.journal.get(current) is None:
            task = self.chain.get_task(current)
            role = Role.EXECUTOR if task.is_executor(self.address) else Role.AUDITOR
            self.journal.add_assigned(current, role, task.task_type)
            log.info("task %d [%s]: found through currentTask", current, role.value)
        for e in self.journal.open_entries():
            self._wake.add(e.task_id)

    def _is_active(self, entry: JournalEntry) -> bool:
        """Whether the task needs work from this node now (not just waiting for others)."""
        if entry.stage in (Stage.ASSIGNED, Stage.COMPUTED):
            return True
        return (entry.stage == Stage.COMMITTED and entry.role == Role.EXECUTOR
                and not (entry.error or "").startswith("upload"))

    # ================================================================ steps

    def _step(self, entry: JournalEntry) -> None:
        task = self.chain.get_task(entry.task_id)
        if entry.task_type != task.task_type and entry.stage == Stage.ASSIGNED:
            entry = self.journal.update(entry.task_id, task_type=task.task_type)
        handler = {
            Stage.ASSIGNED: self._step_assigned,
            Stage.COMPUTED: self._step_computed,
            Stage.COMMITTED: self._step_committed,
            Stage.DELIVERED: self._step_committed,
            Stage.DISCLOSED: self._step_disclosed,
            Stage.ABANDONED: self._step_abandoned,
        }.get(entry.stage)
        if handler is not None:
            handler(entry, task)

    def _may_commit(self, task: TaskInfo) -> bool:
        if task.is_executor(self.address):
            return task.status == TaskStatus.STARTED
        i = task.auditor_index(self.address)
        return task.status == TaskStatus.AUDITING and i is not None

    def _close(self, entry: JournalEntry, note: str, *, level: int = logging.INFO) -> None:
        total = time.time() - entry.created_at
        t = entry.timings
        phases = ", ".join(f"{k} {v:.2f}" for k, v in t.items() if k.endswith("_s"))
        log.log(level, "task %d [%s] done: %s (%.1f s since assigned; %s)", entry.task_id, entry.role.value,
                note, total, phases or "no phases")
        self.journal.advance(entry.task_id, Stage.DONE, outcome=note)
        self._fetched.pop(entry.task_id, None)

    def _timing(self, entry: JournalEntry, **phases: float) -> dict[str, Any]:
        return {**entry.timings, **{k: round(v, 4) for k, v in phases.items()}}

    # --- ASSIGNED: fetch the arguments, start the engine --------------------------------------

    def _step_assigned(self, entry: JournalEntry, task: TaskInfo) -> None:
        tid = entry.task_id
        if self.engine.busy_with is not None and self.engine.busy_with.task_id == tid:
            return  # computing
        if not self._may_commit(task):
            self._close(entry, f"no longer ours to compute (status {task.status.name})", level=logging.WARNING)
            return
        if self.chain.timestamp() > task.commit_deadline(self.address):
            self._abandon(entry, task, "the commit deadline passed before a result was ready")
            return
        if self.engine.busy_with is not None:
            return  # another task computes; this one waits (cannot happen with one task per node)
        fetched = self._fetched.get(tid)
        if fetched is None:  # fetched while the engine may still be starting
            fetched = self._fetch(entry, task)
            if fetched is None:
                return  # an error result was produced without the engine
            self._fetched[tid] = fetched
        try:
            if not self.engine.ready():
                return  # still starting: woken when it is ready
        except EngineDied as exc:
            self._engine_start_failed(exc)
            return
        self.engine.submit(fetched.request)
        fetched.started = time.monotonic()
        log.info("task %d [%s]: computing (%s, attempt %d)", tid, entry.role.value,
                 TaskType(task.task_type).name.lower(), entry.failures + 1)

    def _fetch(self, entry: JournalEntry, task: TaskInfo) -> _Fetched | None:
        from relay_client.client import IntegrityError, RelayError, RelayGone

        tid = entry.task_id
        t0 = time.monotonic()
        try:
            args = self.relay.get_task_args(tid, expected_hash=task.args_hash)
        except RelayGone as exc:
            # The creator never uploaded them: like invalid arguments, the error score (the
            # relay tells every node of the task the same, so auditors agree).
            self._record_result(entry, task, EngineReply(
                task_id=tid, ok=True, files=[], score=scores.ERROR_SCORE,
                error=f"the task's arguments never reached the relay ({exc.detail})",
            ))
            return None
        except IntegrityError as exc:
            raise _Retry(f"the relay served arguments that do not match the on-chain argsHash ({exc})") from exc
        except RelayError as exc:
            raise _Retry(f"cannot fetch the arguments from the relay: {exc}") from exc
        except Exception as exc:  # httpx transport errors
            raise _Retry(f"relay unreachable: {type(exc).__name__}: {exc}") from exc
        hashes = self.chain.task_model_hashes(tid, self._seen_block.get(tid))
        args_s = time.monotonic() - t0
        entry = self.journal.update(tid, timings=self._timing(entry, args_s=args_s))
        log.info("task %d [%s]: arguments fetched (%d bytes, hash checked) in %.2f s",
                 tid, entry.role.value, len(args), args_s)

        model_ids: list[str] | None = None
        try:
            parsed = parse_task_args(args, task.task_type)
        except ArgsError:
            parsed = None  # the engine states why (error score)
        if parsed is not None:
            model_ids = parsed.model_ids()
            if [keccak(text=m) for m in model_ids] != hashes:
                self._record_result(entry, task, EngineReply(
                    task_id=tid, ok=True, files=[], score=scores.ERROR_SCORE,
                    error=f"the arguments name models {model_ids}, which are not the models the task declares",
                ))
                return None
        if self.cfg.behaviour != "honest":
            args = _cheat(args, self.cfg.behaviour)
            log.warning("task %d: TEST-ONLY behaviour %r: computing a deliberately wrong result",
                        tid, self.cfg.behaviour)
        num_images = task.num_images if task.task_type == TaskType.IMAGE else None
        req = EngineRequest(task_id=tid, task_type=task.task_type, args=args, model_ids=model_ids,
                            num_images=num_images)
        return _Fetched(request=req, started=time.monotonic())

    # --- engine replies ---------------------------------------------------------------------

    def _on_reply(self, reply: EngineReply) -> None:
        entry = self.journal.get(reply.task_id)
        if entry is None or entry.stage != Stage.ASSIGNED:
            return
        if not reply.ok:
            self._engine_failed(reply.task_id, f"{reply.failure_kind}: {reply.failure}", restart=True)
            return
        try:
            task = self.chain.get_task(reply.task_id)
            self._record_result(entry, task, reply)
        except (ChainUnavailable, _Retry) as exc:  # the journal has the result: the loop retries
            self._later(reply.task_id, str(exc))

    def _record_result(self, entry: JournalEntry, task: TaskInfo, reply: EngineReply) -> None:
        tid = entry.task_id
        fetched = self._fetched.pop(tid, None)
        infer_s = time.monotonic() - fetched.started if fetched else 0.0
        folder = self._write_files(tid, reply.files)
        salt = scores.new_salt()
        commitment = scores.commitment(tid, self.address, reply.score, salt)
        engine_t = {f"engine_{k}": v for k, v in reply.timings.items()}
        timings = self._timing(entry, infer_s=infer_s, **engine_t)
        if reply.loads:
            timings["model_loads"] = dict(reply.loads)
        # Durable before the commit transaction exists: a crash from here on can still
        # deliver and disclose exactly what will be committed.
        self.journal.advance(
            tid, Stage.COMPUTED, score=reply.score, salt=salt, commitment=commitment,
            result_dir=str(folder), note=reply.error, timings=timings,
        )
        if reply.error is not None:
            log.warning("task %d [%s]: invalid arguments, committing the error score: %s",
                        tid, entry.role.value, reply.error)
        else:
            log.info("task %d [%s]: computed in %.2f s (%s), score %s", tid, entry.role.value, infer_s,
                     ", ".join(f"{k} {v:.2f}" for k, v in reply.timings.items()), reply.score.hex()[:16])
        _test_crash_point("computed")
        self._wake.add(tid)
        entry = self.journal.get(tid)
        assert entry is not None
        self._step_computed(entry, task)

    def _write_files(self, task_id: int, files: list[tuple[str, bytes]]) -> Path:
        final = self._results / str(task_id)
        tmp = self._results / f".{task_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        names = []
        for i, (name, data) in enumerate(files):
            safe = f"{i:02d}-{Path(name).name}"
            with open(tmp / safe, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            names.append(safe)
        (tmp / "manifest.json").write_text(json.dumps({"files": names, "names": [n for n, _ in files]}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        dirfd = os.open(self._results, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        return final

    def _read_files(self, entry: JournalEntry) -> list[tuple[str, bytes]]:
        folder = Path(entry.result_dir or "")
        manifest = json.loads((folder / "manifest.json").read_text())
        return [(orig, (folder / stored).read_bytes()) for stored, orig in zip(manifest["files"], manifest["names"],
                                                                               strict=True)]

    def _engine_failed(self, task_id: int, reason: str, *, restart: bool) -> None:
        log.error("task %d: inference failed on this node: %s", task_id, reason)
        if restart:
            self.engine.restart()
        entry = self.journal.get(task_id) if task_id else None
        if entry is None or entry.stage != Stage.ASSIGNED:
            return
        failures = entry.failures + 1
        entry = self.journal.update(task_id, failures=failures, error=reason)
        if failures >= self.cfg.max_inference_attempts:
            task = self.chain.get_task(task_id)
            if reason.startswith("ModelUnavailable"):
                # A well-formed model this node cannot obtain: no error score (an auditor that
                # holds the model computes a real result, so it would be slashable).
                log.error("task %d: this node cannot obtain a model the task names (%s): committing "
                          "nothing, the task will time out; to take such tasks configure the model "
                          "(models:) or allow its repo (allowed_repos:)", task_id,
                          reason.removeprefix("ModelUnavailable: "))
            self._abandon(entry, task, f"inference failed {failures} times (last: {reason})")
        else:
            log.warning("task %d: retrying on a fresh engine (attempt %d of %d)", task_id, failures + 1,
                        self.cfg.max_inference_attempts)
            self._wake.add(task_id)

    def _check_hang(self) -> None:
        busy = self.engine.busy_with
        if busy is None:
            return
        entry = self.journal.get(busy.task_id)
        if entry is None:
            return
        if self.engine.busy_seconds < 5:
            return
        task = self.chain.get_task(busy.task_id)
        if self.chain.timestamp() > task.commit_deadline(self.address):
            log.error("task %d: still computing after its commit deadline (%.0f s): killing the engine",
                      busy.task_id, self.engine.busy_seconds)
            self.engine.restart()
            self._abandon(entry, task, "the commit deadline passed while computing")

    def _abandon(self, entry: JournalEntry, task: TaskInfo, reason: str) -> None:
        self._fetched.pop(entry.task_id, None)
        log.error("task %d [%s]: abandoned, nothing committed (%s); the task will time out",
                  entry.task_id, entry.role.value, reason)
        self.journal.advance(entry.task_id, Stage.ABANDONED, note=reason)

    # --- COMPUTED: commit ---------------------------------------------------------------------

    def _step_computed(self, entry: JournalEntry, task: TaskInfo) -> None:
        tid = entry.task_id
        assert entry.commitment is not None
        on_chain = self.chain.commitment_of(tid)
        if on_chain == entry.commitment:
            log.info("task %d [%s]: the commitment is on-chain already (resumed)", tid, entry.role.value)
            self.journal.advance(tid, Stage.COMMITTED)
            self._wake.add(tid)
            return
        if any(on_chain):
            self._close(entry, "on-chain commitment differs from the journal's", level=logging.ERROR)
            return
        if not self._may_commit(task):
            self._close(entry, f"cannot commit any more (status {task.status.name})", level=logging.WARNING)
            return
        t0 = time.monotonic()
        try:
            receipt = self.chain.commit(tid, entry.commitment)
        except TxReverted as exc:
            if self.chain.commitment_of(tid) == entry.commitment:
                self.journal.advance(tid, Stage.COMMITTED)
                return
            self._close(entry, f"commit rejected: {exc}", level=logging.ERROR)
            return
        commit_s = time.monotonic() - t0
        _test_crash_point("commit_mined")
        entry = self.journal.advance(tid, Stage.COMMITTED, timings=self._timing(entry, commit_s=commit_s))
        log.info("task %d [%s]: committed in block %d (%.2f s)", tid, entry.role.value,
                 receipt["blockNumber"], commit_s)
        self._wake.add(tid)
        if entry.role == Role.EXECUTOR:
            # Deliver at once (the application waits for it): the executor's commit moved the
            # task to Committed, so the next pass's chain reads would tell nothing new.
            self._step_committed(entry, dataclasses.replace(task, status=TaskStatus.COMMITTED))

    # --- COMMITTED / DELIVERED: upload, disclose, close ------------------------------------------

    def _step_committed(self, entry: JournalEntry, task: TaskInfo) -> None:
        tid = entry.task_id
        if (entry.stage == Stage.COMMITTED and entry.role == Role.EXECUTOR
                and not (entry.error or "").startswith("upload")):
            if task.delivered:
                entry = self.journal.advance(tid, Stage.DELIVERED)
            elif task.status.is_final:
                pass
            elif self.chain.timestamp() > task.deadline:
                entry = self.journal.update(tid, error="upload: the delivery deadline passed")
                log.error("task %d: the delivery deadline passed before the relay took the result", tid)
            else:
                entry = self._upload(entry)
        if task.status == TaskStatus.DISCLOSING:
            self._disclose(entry, task)
            return
        if task.status.is_final:
            self._close(entry, f"task {task.status.name.lower()}")

    def _upload(self, entry: JournalEntry) -> JournalEntry:
        from relay_client.client import RelayConflict, RelayError, RelayRejected, ResultUpload

        tid = entry.task_id
        files = self._read_files(entry)
        uploads = [ResultUpload(name, data, "image/png" if name.endswith(".png") else "application/json")
                   for name, data in files]
        assert entry.score is not None and entry.salt is not None
        t0 = time.monotonic()
        try:
            delivered = self.relay.upload_results(tid, uploads, entry.score, entry.salt)
        except RelayConflict as exc:
            if exc.code == "already_delivered":
                log.info("task %d: the relay has the result already (resumed)", tid)
                return self.journal.advance(tid, Stage.DELIVERED)
            raise _Retry(f"the relay cannot take the result yet: {exc}") from exc
        except RelayRejected as exc:
            log.error("task %d: the relay rejected the result: %s", tid, exc)
            return self.journal.update(tid, error=f"upload rejected: {exc}")
        except RelayError as exc:
            raise _Retry(f"upload failed: {exc}") from exc
        except Exception as exc:  # transport
            raise _Retry(f"relay unreachable: {type(exc).__name__}: {exc}") from exc
        upload_s = time.monotonic() - t0
        _test_crash_point("uploaded")
        state = delivered.attestation.state
        log.info("task %d [executor]: delivered %d file(s), %d bytes in %.2f s; attestation %s",
                 tid, len(uploads), delivered.total_size, upload_s, state)
        entry = self.journal.advance(tid, Stage.DELIVERED, timings=self._timing(entry, upload_s=upload_s))
        self._wake.add(tid)
        return entry

    def _disclose(self, entry: JournalEntry, task: TaskInfo) -> None:
        tid = entry.task_id
        if self.chain.timestamp() > task.disclose_deadline:
            log.error("task %d: the disclosure window closed before this node disclosed", tid)
            return
        assert entry.score is not None and entry.salt is not None
        t0 = time.monotonic()
        try:
            receipt = self.chain.disclose(tid, entry.score, entry.salt)
        except TxReverted as exc:
            if exc.error == "AlreadyDisclosed":
                self.journal.advance(tid, Stage.DISCLOSED)
                return
            if exc.error in ("WrongStatus", "NotAssigned"):
                self._wake.add(tid)  # re-read the task next pass
                log.info("task %d: not disclosing: %s", tid, exc)
                return
            raise _Retry(str(exc)) from exc
        disclose_s = time.monotonic() - t0
        self.journal.advance(tid, Stage.DISCLOSED, timings=self._timing(entry, disclose_s=disclose_s))
        log.info("task %d [%s]: disclosed in block %d (%.2f s)", tid, entry.role.value,
                 receipt["blockNumber"], disclose_s)
        self._wake.add(tid)

    def _step_disclosed(self, entry: JournalEntry, task: TaskInfo) -> None:
        if task.status.is_final:
            self._close(entry, f"task {task.status.name.lower()} after the audit")

    def _step_abandoned(self, entry: JournalEntry, task: TaskInfo) -> None:
        if task.status.is_final:
            self._close(entry, f"abandoned; task {task.status.name.lower()}", level=logging.WARNING)
            return
        # An executor that could not commit stays Busy until timeout() ends its task; anyone may
        # call it once the deadline passed. (An auditor would slash itself: it waits instead.)
        if (task.is_executor(self.address) and task.status == TaskStatus.STARTED
                and self.chain.timestamp() > task.deadline):
            try:
                self.chain.timeout(entry.task_id)
                log.warning("task %d: called timeout() to end the abandoned task", entry.task_id)
            except TxReverted as exc:
                log.info("task %d: timeout() not possible yet: %s", entry.task_id, exc)


class _Retry(Exception):
    """A step could not be done now (relay, RPC); the task is retried with a backoff."""


def _cheat(args: bytes, behaviour: str) -> bytes:
    """TEST ONLY (NodeConfig.behaviour): arguments that give a plausible but wrong result."""
    if behaviour != "wrong_image":
        return args
    try:
        doc = json.loads(args)
    except ValueError:
        return args
    if isinstance(doc.get("task_config"), dict) and isinstance(doc["task_config"].get("seed"), int):
        doc["task_config"]["seed"] += 1
    elif isinstance(doc.get("seed"), int):
        doc["seed"] += 1
    return canonical_json(doc)


__all__ = ["CRASH_ENV", "CRASH_FILE_ENV", "CRASH_POINTS", "Worker"]
