"""``crynux-node``: join the network, run the protocol loop, pause, resume, quit, status.

    crynux-node --config node.yaml join       # stake, declare hardware and held models
    crynux-node --config node.yaml run        # the loop (SIGTERM: finish, pause, exit)
    crynux-node --config node.yaml pause | resume | quit | withdraw
    crynux-node --config node.yaml rewards [--json] | claim   # emission: node and task mining
    crynux-node --config node.yaml status [--json]

The configuration is a YAML/TOML file (``--config`` or $CRYNUX_NODE_CONFIG) plus
CRYNUX_NODE_* environment variables (see node_client.config). The key comes from an
encrypted keystore or an Ape account; its password from a file or $CRYNUX_NODE_PASSWORD.

Exit codes: 0 done, 1 a transaction reverted or the chain/relay failed, 2 bad configuration
or a node that cannot do this (not joined, already joined ...).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from eth_utils import keccak

from crynux_common.deployment import Deployment, DeploymentError
from crynux_common.enums import NodeStatus
from node_client.chain import ChainError, NodeChain, TxReverted
from node_client.config import ConfigError, NodeConfig, load_config
from node_client.journal import Journal
from node_client.rewards import Rewards, RewardsUnavailable, claim_rewards, read_rewards
from node_client.wallet import WalletError, load_wallet

log = logging.getLogger("crynux_node")


class UsageError(Exception):
    """The command cannot run for this node (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crynux-node", description="The Crynux network node")
    p.add_argument("--config", "-c", help="YAML or TOML configuration file (or $CRYNUX_NODE_CONFIG)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING ... (overrides the configuration)")
    sub = p.add_subparsers(dest="command", required=True)
    j = sub.add_parser("join", help="stake and join: hardware detected, held models declared")
    j.add_argument("--stake", help="stake in CNX (default: the configuration's stake_cnx)")
    sub.add_parser("run", help="run the protocol loop")
    sub.add_parser("pause", help="stop taking tasks (after the current one)")
    sub.add_parser("resume", help="take tasks again")
    sub.add_parser("quit", help="leave the network; the stake returns once no task is open to audit")
    sub.add_parser("withdraw", help="send the CNX the market holds for this node to it")
    rw = sub.add_parser("rewards", help="emission rewards claimable now (node mining, task mining by month)")
    rw.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("claim", help="mint the claimable emission rewards to this node's address")
    st = sub.add_parser("status", help="node information from the chain and the local journal")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--tasks", type=int, default=10, help="recent journal tasks to show")
    return p


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if root.handlers:  # embedded (tests, another program): leave its handlers alone
        logging.getLogger("crynux_node").setLevel(level.upper())
        return
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("urllib3", "httpx", "httpcore", "web3", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _connect(cfg: NodeConfig, *, with_key: bool = True) -> NodeChain:
    try:
        deployment = Deployment.load(cfg.deployment_file)
    except DeploymentError as exc:
        raise UsageError(str(exc)) from exc
    account = load_wallet(cfg).account if with_key else None
    return NodeChain(cfg.rpc_url, deployment, account, receipt_timeout=cfg.receipt_timeout,
                     log_chunk_blocks=cfg.log_chunk_blocks)


# --- commands ------------------------------------------------------------------------------


def cmd_join(cfg: NodeConfig, args: argparse.Namespace) -> int:
    from decimal import Decimal

    from node_client.models import ModelRegistry

    if cfg.gpu is not None:
        gpu_name, vram = cfg.gpu.name, cfg.gpu.vram_gb
        log.info("declaring the configured hardware: %s, %d GB", gpu_name, vram)
    else:
        from node_client.hardware import detect_hardware

        hw = detect_hardware(cpu_gpu_name=cfg.cpu_gpu_name, prefer_cpu=cfg.device == "cpu")
        gpu_name, vram = hw.gpu_name, hw.vram_gb
        if vram == 0:
            raise UsageError("no CUDA GPU detected: set `gpu: {name: ..., vram_gb: ...}` in the configuration "
                             "to declare this machine (VRAM must be at least 1 GB on-chain)")
    chain = _connect(cfg)
    status = chain.node_status()
    if status not in (NodeStatus.NONE, NodeStatus.QUIT):
        raise UsageError(f"node {chain.address} is already joined (status {status.name})")
    registry = ModelRegistry(cfg.registry_settings())
    held = registry.held_model_ids()
    max_models = int(chain.registry_params()["max_models"])
    if len(held) > max_models:
        log.warning("holding %d models; declaring the first %d (the registry's maxModels)", len(held), max_models)
        held = held[:max_models]
    stake = int(Decimal(args.stake) * 10**18) if args.stake else cfg.stake_wei
    balance = chain.token_balance()
    if balance < stake:
        raise UsageError(f"the stake is {stake / 1e18:g} CNX but {chain.address} holds {balance / 1e18:g} CNX")
    hashes = [keccak(text=m) for m in held]
    version = list(cfg.client_version)
    if cfg.join_with_permit:
        receipt = chain.join_with_permit(stake, gpu_name, vram, version, hashes)
    else:
        chain.approve_stake(stake)
        receipt = chain.join(stake, gpu_name, vram, version, hashes)
    info = chain.node_info()
    print(f"joined: {chain.address} status {info.status.name}, stake {info.stake / 1e18:g} CNX, "
          f"GPU {gpu_name!r} {vram} GB, version {'.'.join(map(str, version))}, "
          f"{len(held)} models ({', '.join(held)}), block {receipt['blockNumber']}")
    return 0


def cmd_run(cfg: NodeConfig, args: argparse.Namespace) -> int:
    from relay_client.client import RelayClient

    from node_client.engine_process import EngineProcess, engine_spec_from_config
    from node_client.worker import Worker

    wallet = load_wallet(cfg)
    log.info("node key loaded from %s: %s", wallet.source, wallet.address)
    try:
        deployment = Deployment.load(cfg.deployment_file)
    except DeploymentError as exc:
        raise UsageError(str(exc)) from exc
    chain = NodeChain(cfg.rpc_url, deployment, wallet.account, receipt_timeout=cfg.receipt_timeout,
                      log_chunk_blocks=cfg.log_chunk_blocks)
    journal = Journal(cfg.journal_path)
    relay = RelayClient(cfg.relay_url, wallet.account)
    engine = EngineProcess(engine_spec_from_config(cfg), start_timeout=cfg.engine_start_timeout)
    if cfg.behaviour != "honest":
        log.warning("TEST-ONLY behaviour %r is set: this node returns wrong results and will be slashed",
                    cfg.behaviour)
    worker = Worker(cfg, chain, relay, journal, engine)
    worker.install_signal_handlers()
    try:
        return worker.run()
    finally:
        relay.close()


def _simple_tx(cfg: NodeConfig, name: str) -> int:
    chain = _connect(cfg)
    before = chain.node_status()
    receipt = getattr(chain, name)()
    after = chain.node_status()
    print(f"{name}: {chain.address} {before.name} -> {after.name} (block {receipt['blockNumber']})")
    return 0


def cmd_withdraw(cfg: NodeConfig, args: argparse.Namespace) -> int:
    chain = _connect(cfg)
    amount = chain.market_balance()
    if amount == 0:
        print(f"nothing to withdraw for {chain.address}")
        return 0
    receipt = chain.withdraw()
    print(f"withdrew {amount / 1e18:g} CNX to {chain.address} (block {receipt['blockNumber']})")
    return 0


def _rewards(chain: NodeChain) -> Rewards:
    try:
        return read_rewards(chain)
    except RewardsUnavailable as exc:
        raise UsageError(str(exc)) from exc


def cmd_rewards(cfg: NodeConfig, args: argparse.Namespace) -> int:
    chain = _connect(cfg)
    r = _rewards(chain)
    if args.json:
        print(json.dumps({"address": chain.address, "node_mining_wei": str(r.node_mining),
                          "task_mining_wei": {str(m): str(v) for m, v in r.task_months.items()},
                          "total_wei": str(r.total), "current_month": r.current_month,
                          "current_month_tasks": r.current_tasks}, indent=2))
        return 0
    months = ", ".join(f"{m}: {v / 1e18:.6f}" for m, v in r.task_months.items()) or "none"
    print(f"node        {chain.address}")
    print(f"node mining {r.node_mining / 1e18:.6f} CNX claimable")
    print(f"task mining {r.task_mining / 1e18:.6f} CNX claimable (ended months: {months})")
    print(f"running     month {r.current_month}: {r.current_tasks} successful tasks so far (claimable after it ends)")
    return 0


def cmd_claim(cfg: NodeConfig, args: argparse.Namespace) -> int:
    chain = _connect(cfg)
    r = _rewards(chain)
    if r.total == 0:
        print(f"nothing to claim for {chain.address}")
        return 0
    before = chain.token_balance()
    receipts = claim_rewards(chain, r)
    minted = chain.token_balance() - before
    print(f"claimed {minted / 1e18:.6f} CNX to {chain.address} (node mining and "
          f"{len(r.task_months)} months of task mining; {len(receipts)} transactions, "
          f"last in block {receipts[-1]['blockNumber']})")
    return 0


def status_data(cfg: NodeConfig, tasks: int = 10) -> dict[str, Any]:
    chain = _connect(cfg)
    info = chain.node_info()
    out: dict[str, Any] = {
        "address": chain.address,
        "status": info.status.name,
        "stake_cnx": info.stake / 1e18,
        "qos": info.qos / 1e6,
        "task_count": info.task_count,
        "unsettled": info.unsettled,
        "vram_gb": info.vram,
        "gpu_hash": "0x" + info.gpu.hex(),
        "version": ".".join(map(str, info.version)),
        "models": len(info.models),
        "current_task": chain.current_task() if info.status != NodeStatus.NONE else 0,
        "market_balance_cnx": chain.market_balance() / 1e18,
        "token_balance_cnx": chain.token_balance() / 1e18,
        "journal": {"path": str(cfg.journal_path), "stages": {}, "recent": []},
    }
    if cfg.journal_path.exists():
        j = Journal(cfg.journal_path)
        out["journal"]["stages"] = j.summary()
        out["journal"]["recent"] = [
            {"task_id": e.task_id, "role": e.role.value, "stage": e.stage.value, "outcome": e.outcome,
             "note": e.note,
             "error": e.error, "timings": {k: v for k, v in e.timings.items() if k.endswith("_s")}}
            for e in j.entries(tasks)
        ]
    return out


def cmd_status(cfg: NodeConfig, args: argparse.Namespace) -> int:
    data = status_data(cfg, args.tasks)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"node      {data['address']}")
    print(f"status    {data['status']}   stake {data['stake_cnx']:g} CNX   QoS {data['qos']:.2f}   "
          f"tasks {data['task_count']} ({data['unsettled']} unsettled)")
    print(f"hardware  {data['vram_gb']} GB VRAM, gpu {data['gpu_hash'][:18]}..., version {data['version']}, "
          f"{data['models']} models")
    print(f"current   task {data['current_task'] or '-'}")
    print(f"balances  {data['market_balance_cnx']:g} CNX to withdraw, {data['token_balance_cnx']:g} CNX in wallet")
    stages = data["journal"]["stages"]
    print(f"journal   {', '.join(f'{k} {v}' for k, v in sorted(stages.items())) or 'empty'}")
    for t in data["journal"]["recent"]:
        phases = " ".join(f"{k[:-2]}={v:.2f}s" for k, v in t["timings"].items())
        print(f"  task {t['task_id']:>6} {t['role']:<8} {t['stage']:<9} {t['outcome'] or ''} {phases}"
              + (f" ({t['note']})" if t["note"] else ""))
    return 0


COMMANDS = {
    "join": cmd_join,
    "run": cmd_run,
    "pause": lambda cfg, args: _simple_tx(cfg, "pause"),
    "resume": lambda cfg, args: _simple_tx(cfg, "resume"),
    "quit": lambda cfg, args: _simple_tx(cfg, "quit"),
    "withdraw": cmd_withdraw,
    "rewards": cmd_rewards,
    "claim": cmd_claim,
    "status": cmd_status,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = {"log_level": args.log_level} if args.log_level else {}
        cfg = load_config(args.config, **overrides)
    except ConfigError as exc:
        print(f"crynux-node: {exc}", file=sys.stderr)
        return 2
    _setup_logging(cfg.log_level)
    try:
        return int(COMMANDS[args.command](cfg, args))
    except (UsageError, WalletError) as exc:
        log.error("%s", exc)
        return 2
    except TxReverted as exc:
        log.error("%s", exc)
        return 1
    except ChainError as exc:
        log.error("chain: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
