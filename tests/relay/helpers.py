"""Test helpers: a real relay process, a throwaway PostgreSQL server, free ports."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_deployment(path: Path, market: str, abi: list | None = None, registry: str | None = None) -> Path:
    contracts: dict = {"TaskMarket": {"address": market}}
    if abi is not None:
        contracts["TaskMarket"]["abi"] = abi
    if registry:
        contracts["NodeRegistry"] = {"address": registry}
    path.write_text(json.dumps({"contracts": contracts}))
    return path


@dataclass
class RelayProcess:
    """``python -m relay_client.cli serve ...`` as a child process."""

    rpc: str
    deployment: Path
    data: Path
    key: str | None = None
    db_url: str | None = None
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "RelayProcess":
        self.data.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable, "-m", "relay_client.cli", "serve", "--rpc", self.rpc,
            "--deployment", str(self.deployment), "--data", str(self.data), "--port", str(self.port),
            "--build-dir", str(REPO_ROOT / ".build"), "--log-level", "warning", *self.extra,
        ]
        if self.db_url:
            args += ["--db", self.db_url]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        if self.key:
            env["CRYNUX_RELAY_KEY"] = self.key
        self.log_path = self.data / f"relay-{self.port}-{int(time.time() * 1000)}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the relay exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the relay did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries, or None when not installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")) and os.path.exists(os.path.join(candidate, "pg_ctl")):
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder (run as the `postgres` user when we are root)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.datadir = root / "pgdata"
        self.port = free_port()
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.decode(errors='replace')[-800:]}")

    def start(self) -> "PostgresServer":
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o", opts,
                  "-l", str(self.root / "pg.log"), "-w", "-t", "60", "start")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop")
        except Exception:
            pass
