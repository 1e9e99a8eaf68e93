"""Process management of a local network: one relay and N node processes against an RPC
URL and a deployment file (used by `ape run demo`, tests/e2e and `ape run bench_e2e`).

Everything runs as separate OS processes (`python -m relay_client.cli serve`,
`python -m node_client.cli run`), each in its own process group so that stopping a node
also stops its inference child. Logs go to files under `<out>/logs/`.

    net = LocalNet(rpc_url, deployment_path, out_dir)
    try:
        net.start_relay(relay_key)
        node = net.add_node("node-1", Account.create())   # keystore + config written
        fund(node.address)                                # the caller funds it (ETH and CNX)
        net.join(node); net.start_node(node); net.wait_ready()
        ...
    finally:
        net.stop()                                        # SIGTERM, then SIGKILL; always safe
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from eth_account.signers.local import LocalAccount

log = logging.getLogger("crynux_localnet")

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_PASSWORD = "localnet-only-password"
TINY_MODEL_IDS = ("base:tiny-sd", "base:tiny-gpt2")


class LocalNetError(RuntimeError):
    """A process did not start, exited early or did not become ready in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    env.pop("CRYNUX_NODE_CONFIG", None)
    env.update(extra)
    return env


def _tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return path.read_text(errors="replace")[-chars:]


@dataclass
class Proc:
    """One child process with its log file."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running():
            raise LocalNetError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(self.args)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                          cwd=REPO_ROOT, start_new_session=True)

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal_group(self, sig: int) -> None:
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, sig)  # the process and its children (inference engine)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the process group and reap it."""
        if self.popen is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) did not die after SIGKILL", self.name, self.popen.pid)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s: killing it", self.name, grace)
        self.kill()  # also the children, whatever the parent did
        return self.popen.returncode


@dataclass
class Node:
    """A node's key, configuration and process."""

    name: str
    account: LocalAccount
    root: Path
    config_path: Path
    proc: Proc

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def journal_path(self) -> Path:
        return self.root / "data" / "journal.sqlite3"

    def journal_timings(self, task_id: int) -> dict[str, Any]:
        """The timings the node recorded for a task (infer_s, commit_s ...), {} if none."""
        if not self.journal_path.exists():
            return {}
        from node_client.journal import Journal

        entry = Journal(self.journal_path).get(task_id)
        return dict(entry.timings) if entry else {}


@dataclass
class LocalNet:
    """A relay and node processes serving one deployed network."""

    rpc_url: str
    deployment_path: Path
    out_dir: Path
    poll_interval: float = 0.1
    torch_threads: int = 1
    #: Extra models the nodes declare (node_client.config ModelSourceConfig dicts: {id, path}).
    extra_models: list[dict[str, Any]] = field(default_factory=list)
    tiny_cache: Path | None = None
    relay: Proc | None = None
    relay_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir).resolve()
        self.deployment_path = Path(self.deployment_path).resolve()
        self.logs_dir.mkdir(parents=True, exist_ok=True)

    @property
    def logs_dir(self) -> Path:
        return self.out_dir / "logs"

    @property
    def relay_url(self) -> str:
        return f"http://127.0.0.1:{self.relay_port}"

    def __enter__(self) -> LocalNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- tiny models ---------------------------------------------------------------------------

    def prepare_tiny_models(self) -> Path:
        """Builds the tiny seeded models once, shared by every node (seconds, no download)."""
        from node_client import tiny_models

        cache = self.tiny_cache or (self.out_dir / "tiny-models")
        for mid in TINY_MODEL_IDS:
            tiny_models.materialize(mid, cache)
        self.tiny_cache = cache
        return cache

    # --- relay ---------------------------------------------------------------------------------

    def start_relay(self, key: str | None = None, timeout: float = 60.0) -> str:
        """Starts (or restarts, same port and data) the relay; waits for /health. Returns its URL."""
        if self.relay is None:
            if key is None:
                raise LocalNetError("the first start of the relay needs its key")
            args = [sys.executable, "-m", "relay_client.cli", "serve", "--rpc", self.rpc_url,
                    "--deployment", str(self.deployment_path), "--data", str(self.out_dir / "relay-data"),
                    "--port", str(self.relay_port), "--build-dir", str(REPO_ROOT / ".build"),
                    "--log-level", "info"]
            self.relay = Proc("relay", args, self.logs_dir / "relay.log", _env(CRYNUX_RELAY_KEY=key))
        self.relay.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.relay.running():
                raise LocalNetError(f"the relay exited at start-up:\n{_tail(self.relay.log_path)}")
            try:
                if httpx.get(self.relay_url + "/health", timeout=1.0).status_code == 200:
                    log.info("relay ready at %s", self.relay_url)
                    return self.relay_url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.relay.kill()
        raise LocalNetError(f"the relay was not healthy after {timeout:.0f} s:\n{_tail(self.relay.log_path)}")

    def kill_relay(self) -> None:
        if self.relay is not None:
            self.relay.kill()

    # --- nodes ---------------------------------------------------------------------------------

    def add_node(self, name: str, account: LocalAccount, *, gpu: str = "CPU-TEST", vram_gb: int = 8,
                 behaviour: str = "honest", **config: Any) -> Node:
        """Writes the node's encrypted keystore and configuration (nothing is started)."""
        from node_client.wallet import create_keystore

        if self.tiny_cache is None:
            self.prepare_tiny_models()
        root = self.out_dir / "nodes" / name
        root.mkdir(parents=True, exist_ok=True)
        create_keystore(root / "key.json", NODE_PASSWORD, private_key=account.key, iterations=2)
        (root / "password").write_text(NODE_PASSWORD + "\n")
        (root / "password").chmod(0o600)
        cfg: dict[str, Any] = {
            "rpc_url": self.rpc_url,
            "deployment_file": str(self.deployment_path),
            "relay_url": self.relay_url,
            "keystore": "key.json",
            "password_file": "password",
            "data_dir": "data",
            "torch_threads": self.torch_threads,
            "device": "cpu",
            "gpu": {"name": gpu, "vram_gb": vram_gb},
            "poll_interval": self.poll_interval,
            "reconcile_every": 10,
            "retry_backoff": 0.2,
            "join_with_permit": True,
            "models": {"tiny_models": True, "tiny_cache_dir": str(self.tiny_cache), "allow_download": False,
                       "models": list(self.extra_models)},
            "behaviour": behaviour,
            **config,
        }
        config_path = root / "node.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        args = [sys.executable, "-m", "node_client.cli", "--config", str(config_path), "run"]
        node = Node(name, account, root, config_path,
                    Proc(name, args, self.logs_dir / f"{name}.log", _env()))
        self.nodes.append(node)
        return node

    def join(self, *nodes: Node, timeout: float = 180.0) -> None:
        """`crynux-node join` for each node, as separate processes run in parallel (stake with
        a permit, hardware and held models declared)."""
        running: list[tuple[Node, subprocess.Popen[bytes], Any]] = []
        try:
            for node in nodes:
                args = [sys.executable, "-m", "node_client.cli", "--config", str(node.config_path), "join"]
                out = open(self.logs_dir / f"{node.name}.log", "ab")
                running.append((node, subprocess.Popen(args, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                                       cwd=REPO_ROOT, start_new_session=True), out))
            deadline = time.monotonic() + timeout
            for node, proc, _out in running:
                try:
                    rc = proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired as exc:
                    raise LocalNetError(f"{node.name}: join took more than {timeout:.0f} s") from exc
                if rc != 0:
                    raise LocalNetError(f"{node.name}: join failed (exit {rc}):\n{_tail(node.proc.log_path)}")
        finally:
            for _node, proc, out in running:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                out.close()

    def node_cli(self, node: Node, *args: str, timeout: float = 120.0) -> None:
        """`crynux-node --config <node> <args>` (pause, resume, quit, withdraw ...) as a process."""
        cmd = [sys.executable, "-m", "node_client.cli", "--config", str(node.config_path), *args]
        with open(self.logs_dir / f"{node.name}-cli.log", "ab") as out:
            rc = subprocess.run(cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                timeout=timeout).returncode
        if rc != 0:
            raise LocalNetError(f"{node.name}: {' '.join(args)} failed (exit {rc}):\n"
                                f"{_tail(self.logs_dir / f'{node.name}-cli.log')}")

    def start_node(self, node: Node) -> None:
        node.proc.start()

    def wait_ready(self, nodes: list[Node] | None = None, timeout: float = 180.0) -> None:
        """Waits until every node's inference engine is up: it logs 'ready in' (engine built) or
        'inference libraries imported' (the engine imported torch and only builds pipelines
        when the first task needs them)."""
        pending = list(nodes if nodes is not None else self.nodes)
        deadline = time.monotonic() + timeout
        while pending:
            for node in list(pending):
                if not node.proc.running():
                    raise LocalNetError(f"{node.name} exited:\n{_tail(node.proc.log_path)}")
                text = node.proc.log()
                last_start = text.rfind("===== start")
                tail = text[last_start:]
                if " ready in " in tail or "inference libraries imported" in tail:
                    pending.remove(node)
            if pending and time.monotonic() > deadline:
                names = ", ".join(n.name for n in pending)
                raise LocalNetError(f"not ready after {timeout:.0f} s: {names}\n{_tail(pending[0].proc.log_path)}")
            time.sleep(0.2)

    def node_by_address(self, address: str) -> Node:
        for n in self.nodes:
            if n.address.lower() == str(address).lower():
                return n
        raise KeyError(address)

    # --- shutdown ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops every node (SIGTERM in parallel, then SIGKILL) and the relay. Never raises."""
        running = [n for n in self.nodes if n.proc.running()]
        for n in running:
            try:
                assert n.proc.popen is not None
                n.proc.popen.send_signal(signal.SIGTERM)
            except Exception:  # already gone
                pass
        deadline = time.monotonic() + 15.0
        for n in running:
            try:
                assert n.proc.popen is not None
                n.proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time: killing it", n.name)
            except Exception:
                pass
        for n in self.nodes:
            try:
                n.proc.kill()
            except Exception as exc:
                log.error("could not kill %s: %s", n.name, exc)
        if self.relay is not None:
            try:
                self.relay.stop(grace=5.0)
            except Exception as exc:
                log.error("could not stop the relay: %s", exc)
