"""Test harness of the node loop: a deployed network, a relay process, node processes.

Everything is real: Anvil (started by ape-foundry), the contracts deployed with
scripts/_network.deploy_network, `python -m relay_client.cli serve` and
`python -m node_client.cli run` processes talking HTTP. Each node declares its own GPU name
so a test picks exactly which nodes can take its tasks (requiredGpu + exact VRAM).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from crynux_common.enums import TaskStatus
from crynux_common.schemas import TaskType, canonical_json
from node_client import cli
from node_client.journal import Journal, JournalEntry
from node_client.wallet import create_keystore
from node_client.worker import CRASH_FILE_ENV
from tests.deployed import DeployedContracts

REPO_ROOT = Path(__file__).resolve().parents[2]
CNX = 10**18
PASSWORD = "correct horse battery staple"
VRAM = 8


def image_args(seed: int, *, num_images: int = 1, steps: int = 2, **over: Any) -> bytes:
    cfg = {"image_width": 64, "image_height": 64, "steps": steps, "seed": seed, "num_images": num_images,
           "cfg": 7.0}
    cfg.update(over.pop("task_config", {}))
    doc = {"version": "1.0", "base_model": "base:tiny-sd", "prompt": f"a red fox number {seed}",
           "negative_prompt": "", "task_config": cfg, **over}
    return canonical_json(doc)


def text_args(seed: int) -> bytes:
    return canonical_json({
        "version": "1.0", "model": "base:tiny-gpt2",
        "messages": [{"role": "user", "content": f"say something {seed}"}],
        "generation_config": {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": True, "temperature": 0.9,
                              "top_p": 0.95, "top_k": 40},
        "seed": seed,
    })


def wait_for(pred: Callable[[], Any], timeout: float, what: str, nodes: list[NodeProc] = (), step: float = 0.2) -> Any:  # type: ignore[assignment]
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    logs = "\n\n".join(f"--- node {n.name} ({n.address}) log tail ---\n{n.log()[-4000:]}" for n in nodes)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


@dataclass
class NodeProc:
    """One node: its key, config, data folder and (when running) its `run` process."""

    name: str
    root: Path
    gpu: str
    config_path: Path
    address: str
    key: LocalAccount
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def crash_file(self) -> Path:
        return self.root / "crash-at"

    def arm_crash(self, point: str) -> None:
        """TEST ONLY hook of the running node: it SIGKILLs itself when it reaches `point`."""
        self.crash_file.write_text(point)

    def journal(self) -> Journal:
        return Journal(self.data_dir / "journal.sqlite3")

    def entry(self, task_id: int) -> JournalEntry | None:
        path = self.data_dir / "journal.sqlite3"
        return Journal(path).get(task_id) if path.exists() else None

    def cli(self, *args: str) -> int:
        """`crynux-node --config ... <args>` in this process (same code path as the console script)."""
        return cli.main(["--config", str(self.config_path), *args])

    def start(self, **env: str) -> NodeProc:
        assert self.proc is None or self.proc.poll() is not None, f"node {self.name} is running"
        log_path = self.root / f"run-{len(self.logs)}.log"
        self.logs.append(log_path)
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false", "CRYNUX_NODE_PASSWORD": PASSWORD,
                    CRASH_FILE_ENV: str(self.crash_file), **env}
        full_env.pop("CRYNUX_NODE_CONFIG", None)
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node_client.cli", "--config", str(self.config_path), "run"],
                env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            )
        return self

    def wait_ready(self, timeout: float = 90.0) -> NodeProc:
        wait_for(lambda: " ready in " in self.current_log() or self._dead(),
                 timeout, f"node {self.name} to start", [self])
        assert not self._dead(), f"node {self.name} exited:\n{self.log()}"
        return self

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def current_log(self) -> str:
        """The log of the latest `run` process."""
        return self.logs[-1].read_text(errors="replace") if self.logs and self.logs[-1].exists() else ""

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node {self.name} did not exit in {timeout} s:\n{self.log()[-4000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Network(DeployedContracts):
    project: Any
    contracts: dict[str, Any]
    owner: Any
    treasury: Any
    creator: Any  # an Ape test account (the application)
    creator_key: LocalAccount
    relay_url: str
    deployment_path: Path
    rpc_url: str
    tiny_cache: Path
    root: Path
    nodes: list[NodeProc] = field(default_factory=list)

    # --- nodes ---------------------------------------------------------------------------------

    def new_node(self, name: str, gpu: str, *, join: bool = True, **config: Any) -> NodeProc:
        root = self.root / name
        root.mkdir(parents=True)
        key = Account.create()
        keystore = root / "key.json"
        create_keystore(keystore, PASSWORD, private_key=key.key, iterations=2)
        (root / "password").write_text(PASSWORD + "\n")
        cfg = {
            "rpc_url": self.rpc_url,
            "deployment_file": str(self.deployment_path),
            "relay_url": self.relay_url,
            "keystore": "key.json",
            "password_file": "password",
            "data_dir": "data",
            "torch_threads": 1,
            "device": "cpu",
            "gpu": {"name": gpu, "vram_gb": VRAM},
            "poll_interval": 0.25,
            "reconcile_every": 4,
            # Tests start and restart many nodes: pay the pipeline imports at the first task only.
            "preload_inference_libraries": False,
            "models": {"tiny_models": True, "tiny_cache_dir": str(self.tiny_cache), "allow_download": False},
            **config,
        }
        config_path = root / "node.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        self.owner.transfer(key.address, 10 * 10**18)
        self.token.transfer(key.address, 1_000 * CNX, sender=self.treasury)
        node = NodeProc(name=name, root=root, gpu=gpu, config_path=config_path, address=key.address, key=key)
        self.nodes.append(node)
        if join:
            assert node.cli("join") == 0
        return node

    def stop_all(self) -> None:
        for n in self.nodes:
            n.kill()

    # --- tasks ---------------------------------------------------------------------------------

    def create_task(
        self, args: bytes, gpu: str | None, *, task_type: TaskType = TaskType.IMAGE, num_images: int = 1,
        models: list[str] | None = None, fee: int = 10 * CNX, always_audit: bool = False,
        upload_args: bool = True,
    ) -> int:
        from relay_client.client import RelayClient

        if upload_args:
            with RelayClient(self.relay_url, self.creator_key) as relay:
                relay.put_args(args)
        if models is None:
            models = ["base:tiny-sd"] if task_type == TaskType.IMAGE else ["base:tiny-gpt2"]
        req = (int(task_type), keccak(args), [keccak(text=m) for m in models], VRAM,
               keccak(text=gpu) if gpu else b"\x00" * 32,
               num_images if task_type == TaskType.IMAGE else 0, fee, always_audit)
        receipt = self.market.createTask(req, sender=self.creator)
        created = [log for log in receipt.decode_logs() if log.event_name == "TaskCreated"]
        return int(created[0].taskId)

    def task(self, task_id: int) -> Any:
        return self.market.getTask(task_id)

    def status(self, task_id: int) -> TaskStatus:
        return TaskStatus(int(self.task(task_id).status))

    def wait_final(self, task_id: int, timeout: float, nodes: list[NodeProc] | None = None) -> TaskStatus:
        wait_for(lambda: self.status(task_id).is_final, timeout, f"task {task_id} to settle",
                 nodes if nodes is not None else self.nodes)
        return self.status(task_id)

    def events(self, name: str, task_id: int) -> list[Any]:
        """The market's `name` events of one task (decoded by Ape)."""
        from ape import chain

        head = int(chain.blocks.head.number)
        return list(getattr(self.market, name).range(0, head + 1, search_topics={"taskId": task_id}))

    def results(self, task_id: int) -> tuple[Any, list[bytes]]:
        from relay_client.client import RelayClient

        with RelayClient(self.relay_url, self.creator_key) as relay:
            manifest = relay.get_results(task_id)
            return manifest, relay.download_results(task_id)


def journal_timings(node: NodeProc, task_id: int) -> dict[str, Any]:
    e = node.entry(task_id)
    return dict(e.timings) if e else {}


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
