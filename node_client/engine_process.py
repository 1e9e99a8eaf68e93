"""The inference engine in a child process.

The protocol loop never imports torch: it hands tasks to a child process that owns an
InferenceEngine (models stay warm there between tasks) and keeps watching the chain while
the child computes. A failure of the child (InferenceFailure, out of memory, a crash, a hang)
never takes the loop down: the loop restarts the child, i.e. a fresh engine.

    engine = EngineProcess(EngineSpec(...)); engine.start()
    engine.submit(EngineRequest(task_id=7, task_type=0, args=b"...", model_ids=[...], num_images=1))
    reply = engine.poll(timeout=1.0)   # EngineReply | None
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    """How to build the engine in the child (plain data: it crosses the process boundary)."""

    registry: dict[str, Any]  # RegistrySettings.model_dump()
    device: str = "auto"
    torch_threads: int | None = None
    memory_budget_bytes: int | None = None
    log_level: str = "INFO"
    #: Import the diffusers/transformers pipeline classes at start-up (about 6 s on a small
    #: CPU), so that the first task does not pay for them.
    preload: bool = True
    #: Models to load right after start-up (kept warm), as (model ID, task type).
    warm: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class EngineRequest:
    task_id: int
    task_type: int
    args: bytes
    model_ids: list[str] | None
    num_images: int | None


@dataclass(frozen=True)
class EngineReply:
    task_id: int
    ok: bool
    files: list[tuple[str, bytes]] = field(default_factory=list)
    score: bytes = b""
    error: str | None = None  # invalid arguments (error score) when ok
    failure: str | None = None  # InferenceFailure type and message when not ok
    failure_kind: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    loads: dict[str, int] = field(default_factory=dict)


class EngineDied(Exception):
    """The engine process exited or did not answer."""


def _child_main(spec: EngineSpec, conn: Connection) -> None:  # pragma: no cover - runs in the child
    try:  # die with the parent even when it is SIGKILLed (Linux)
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the loop decides when we stop
    logging.basicConfig(
        level=spec.log_level.upper(), format="%(asctime)s %(levelname)s engine[%(process)d] %(name)s: %(message)s"
    )
    from node_client.inference import EngineSettings, InferenceEngine, InferenceFailure, TorchSettings
    from node_client.models import ModelRegistry, RegistrySettings

    engine = InferenceEngine(
        ModelRegistry(RegistrySettings.model_validate(spec.registry)),
        EngineSettings(
            torch=TorchSettings(device=spec.device, num_threads=spec.torch_threads),  # type: ignore[arg-type]
            memory_budget_bytes=spec.memory_budget_bytes,
        ),
    )
    clog = logging.getLogger(__name__)
    if spec.preload:
        t0 = time.monotonic()
        try:
            import diffusers
            import transformers

            _ = (diffusers.StableDiffusionPipeline, diffusers.StableDiffusionXLPipeline,
                 transformers.AutoModelForCausalLM, transformers.AutoTokenizer)
            clog.info("inference libraries imported in %.1f s", time.monotonic() - t0)
        except Exception as exc:
            clog.warning("could not preload the inference libraries: %s", exc)
    for model_id, task_type in spec.warm:
        try:
            engine.warm(model_id, task_type)
        except Exception as exc:
            clog.warning("could not warm %s: %s", model_id, exc)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        if req is None:
            return
        assert isinstance(req, EngineRequest)
        try:
            r = engine.run(req.task_type, req.args, task_model_ids=req.model_ids, num_images=req.num_images)
            reply = EngineReply(
                task_id=req.task_id, ok=True, files=r.files, score=r.score, error=r.error,
                timings=dict(r.timings), loads=dict(engine.cache.stats.loads),
            )
        except InferenceFailure as exc:
            reply = EngineReply(
                task_id=req.task_id, ok=False, failure=str(exc), failure_kind=type(exc).__name__,
                loads=dict(engine.cache.stats.loads),
            )
        except Exception as exc:  # the engine promises InferenceFailure only; be safe anyway
            reply = EngineReply(task_id=req.task_id, ok=False, failure=f"{type(exc).__name__}: {exc}",
                                failure_kind="InferenceFailure")
        try:
            conn.send(reply)
        except (EOFError, OSError, BrokenPipeError):
            return


class EngineProcess:
    """One engine child process; submit one task at a time, poll for the reply.

    `launch()` starts the child without waiting (the loop keeps delivering and disclosing
    while torch loads); `ready()` says whether it can take a task; `start()` waits."""

    def __init__(self, spec: EngineSpec, *, start_timeout: float = 300.0) -> None:
        self.spec = spec
        self.start_timeout = start_timeout
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._ready = False
        self._launched_at = 0.0
        self._busy: EngineRequest | None = None
        self._submitted_at = 0.0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def busy_with(self) -> EngineRequest | None:
        return self._busy

    @property
    def busy_seconds(self) -> float:
        return time.monotonic() - self._submitted_at if self._busy else 0.0

    @property
    def starting(self) -> bool:
        return self._proc is not None and not self._ready

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def launch(self) -> None:
        """Starts the child process; returns at once."""
        if self._proc is not None:
            return
        parent, child = self._ctx.Pipe(duplex=True)
        self._proc = self._ctx.Process(target=_child_main, args=(self.spec, child), name="crynux-engine", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self._ready = False
        self._launched_at = time.monotonic()

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the engine can take a task (waits up to `timeout` for its start-up).
        Raises EngineDied when the child died or overran start_timeout while starting."""
        if self._ready:
            return True
        if self._proc is None or self._conn is None:
            return False
        try:
            got = self._conn.poll(timeout)
        except (OSError, EOFError):
            got = True
        if not got:
            if not self._proc.is_alive():
                code = self._exitcode()
                self.stop(kill=True)
                raise EngineDied(f"the engine process exited while starting (code {code})")
            if time.monotonic() - self._launched_at > self.start_timeout:
                self.stop(kill=True)
                raise EngineDied(f"the engine process did not start within {self.start_timeout:.0f} s")
            return False
        try:
            msg = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._exitcode()
            self.stop(kill=True)
            raise EngineDied(f"the engine process died while starting (exit code {code})") from exc
        if not (isinstance(msg, tuple) and msg[0] == "ready"):
            self.stop(kill=True)
            raise EngineDied(f"unexpected first message from the engine: {msg!r}")
        self._ready = True
        self.starts += 1
        log.info("engine process %d ready in %.1f s", self._proc.pid, time.monotonic() - self._launched_at)
        return True

    def start(self) -> float:
        """Starts the child and waits until its engine is built; returns the seconds it took."""
        self.launch()
        while not self.ready(0.5):
            pass
        return time.monotonic() - self._launched_at

    def _exitcode(self) -> int | None:
        if self._proc is None:
            return None
        self._proc.join(0.5)
        return self._proc.exitcode  # type: ignore[no-any-return]

    def submit(self, req: EngineRequest) -> None:
        if self._busy is not None:
            raise RuntimeError(f"the engine is busy with task {self._busy.task_id}")
        if self._conn is None or not self._ready or not self.alive():
            raise EngineDied("the engine process is not ready")
        try:
            self._conn.send(req)
        except (OSError, BrokenPipeError) as exc:
            raise EngineDied(f"cannot send to the engine process: {exc}") from exc
        self._busy = req
        self._submitted_at = time.monotonic()

    def poll(self, timeout: float = 0.0) -> EngineReply | None:
        """The reply to the submitted task, or None if it is still running.
        Raises EngineDied when the child died meanwhile."""
        if self._busy is None or self._conn is None:
            return None
        try:
            ready = self._conn.poll(timeout)
        except (OSError, EOFError) as exc:
            self._busy = None
            raise EngineDied(f"the engine process is gone (exit code {self._exitcode()})") from exc
        if not ready:
            if not self.alive():
                self._busy = None
                raise EngineDied(f"the engine process exited (code {self._exitcode()})")
            return None
        try:
            reply = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._busy = None
            raise EngineDied(f"the engine process died while computing (exit code {self._exitcode()})") from exc
        self._busy = None
        assert isinstance(reply, EngineReply)
        return reply

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stops the child: asks it to exit (or SIGKILLs it: it holds no state worth keeping)."""
        if self._conn is not None:
            if not kill:
                try:
                    self._conn.send(None)
                except (OSError, BrokenPipeError):
                    pass
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if kill:
                self._proc.kill()
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
            self._proc = None
        self._busy = None
        self._ready = False

    def restart(self) -> None:
        """Kills the child and launches a fresh one (without waiting for it)."""
        log.warning("restarting the engine process (a fresh engine)")
        self.stop(kill=True)
        self.launch()


def engine_spec_from_config(cfg: Any) -> EngineSpec:
    """EngineSpec from a NodeConfig."""
    registry = cfg.models.model_dump(mode="json")
    return EngineSpec(
        registry=registry,
        device=cfg.device,
        torch_threads=cfg.torch_threads,
        memory_budget_bytes=cfg.memory_budget_bytes,
        log_level=cfg.log_level,
        preload=cfg.preload_inference_libraries,
        warm=tuple([(m, 0) for m in cfg.warm_image_models] + [(m, 1) for m in cfg.warm_text_models]),
    )

