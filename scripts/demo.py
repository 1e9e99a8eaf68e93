"""`make demo` (`ape run demo`): a whole local network in one command.

On the Anvil that ape-foundry starts: deploys every contract (scripts/_network.py), funds
three node accounts and an application account, starts the relay and three node
processes (tiny seeded models on the CPU unless --model names a real one held locally),
joins the nodes, runs one image task (audited: alwaysAudit, three nodes) and one text
task through the SDK, saves the images and the text under demo-output/, prints a summary
(task ids, transactions, gas, seconds per phase), shuts everything down and exits 0.

    ape run demo
    ape run demo --model base:stabilityai/sd-turbo --size 512 --steps 4   # a model in the HF cache
    ape run demo --model base:my-sd --model-path /models/sd15             # a local folder
Logs: demo-output/logs/ (relay.log, node-1.log ...).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# `ape run` does not put the project first on sys.path: make this checkout's packages win
# over any installed copy (an editable install of another checkout).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
from ape import accounts, chain, project
from ape.cli import ConnectedProviderCommand, network_option
from eth_account import Account

from scripts._localnet import LocalNet, LocalNetError
from scripts._network import deploy_network, deployment_record, load_params

CNX = 10**18
NODE_CNX = 1_000 * CNX
APP_CNX = 10_000 * CNX
ETH = 10**18


class Phases:
    """Wall-clock seconds per named phase, printed in the summary."""

    def __init__(self) -> None:
        self.items: list[tuple[str, float]] = []

    def run(self, name: str, fn: Any, *args: Any, **kw: Any) -> Any:
        click.echo(f"==> {name} ...")
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.items.append((name, time.perf_counter() - t))


def _fresh_output(out: Path) -> None:
    """demo-output/ from a previous run belongs to a chain that no longer exists: clear it
    (the tiny-model cache is kept, it only depends on the code)."""
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        if child.name == "tiny-models":
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _role(address: str, names: dict[str, str]) -> str:
    return names.get(address.lower(), address[:10])


@click.command(cls=ConnectedProviderCommand)
@network_option(default="ethereum:local:foundry")
@click.option("--model", default="base:tiny-sd", show_default=True,
              help="Image model ID the nodes hold locally (e.g. a Hugging Face repo in the local cache).")
@click.option("--model-path", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of the --model weights (diffusers format), if not in the Hugging Face cache.")
@click.option("--text-model", default="base:tiny-gpt2", show_default=True, help="Text model ID.")
@click.option("--prompt", default="a red fox in the snow, watercolor", show_default=True)
@click.option("--size", default=None, type=int, help="Image width and height (default 64 tiny, 512 real).")
@click.option("--steps", default=None, type=int, help="Denoising steps (default 4 tiny, 25 real).")
@click.option("--out", "out_dir", default="demo-output", show_default=True, type=click.Path(file_okay=False))
@click.option("--timeout", default=None, type=float, help="Seconds each task may take (default 300 tiny).")
@click.option("--params", "params_file", default="config/params.yaml", show_default=True)
def cli(network: str, model: str, model_path: str | None, text_model: str, prompt: str, size: int | None,
        steps: int | None, out_dir: str, timeout: float | None, params_file: str) -> None:
    from relay_client import CrynuxClient
    from relay_client.sdk import CrynuxError, Progress

    tiny = model.startswith("base:tiny-")
    size = size or (64 if tiny else 512)
    steps = steps or (4 if tiny else 25)
    timeout = timeout or (300.0 if tiny else 3600.0)
    out = Path(out_dir).resolve()
    _fresh_output(out)
    rpc_url = str(getattr(chain.provider, "uri", None) or chain.provider.web3.provider.endpoint_uri)
    phases = Phases()
    t_all = time.perf_counter()

    deployer, treasury = accounts.test_accounts[0], accounts.test_accounts[1]
    relay_key = Account.create()
    app = Account.create()
    node_keys = [Account.create() for _ in range(3)]

    params = load_params(params_file if Path(params_file).exists() else None)
    # A demo should fail fast: an audit that stalls is settled by timeout() after 2 minutes.
    params.setdefault("market", {}).update({"auditWindow": 120, "discloseWindow": 120})
    contracts = phases.run("deploy the contracts", deploy_network, project, deployer,
                           treasury=treasury.address, relay=relay_key.address, params=params)
    deployment_path = out / "deployment.json"
    deployment_record(network.replace(":", "-") if isinstance(network, str) else "local", contracts).save(
        deployment_path)
    token = contracts["CNXToken"]

    def fund() -> None:
        for acct in (relay_key, app, *node_keys):
            deployer.transfer(acct.address, 10 * ETH)
        token.transfer(app.address, APP_CNX, sender=treasury)
        for k in node_keys:
            token.transfer(k.address, NODE_CNX, sender=treasury)

    phases.run("fund the relay, the application and three nodes", fund)
    extra = [] if tiny else [{"id": model, **({"path": str(Path(model_path).resolve())} if model_path else {})}]
    net = LocalNet(rpc_url, deployment_path, out, poll_interval=0.1, extra_models=extra)
    names = {relay_key.address.lower(): "relay", app.address.lower(): "app"}
    reports = []
    exit_code = 0
    try:
        phases.run("build the tiny models", net.prepare_tiny_models)
        phases.run("start the relay", net.start_relay, relay_key.key.hex())
        nodes = [net.add_node(f"node-{i + 1}", k) for i, k in enumerate(node_keys)]
        for n in nodes:
            names[n.address.lower()] = n.name

        def join_and_start() -> None:
            net.join(*nodes)
            for n in nodes:
                net.start_node(n)
            net.wait_ready(timeout=300)

        phases.run("join and start three nodes", join_and_start)
        client = CrynuxClient(rpc_url, deployment_path, net.relay_url, app, poll_interval=0.1)

        def show(p: Progress) -> None:
            who = f" on {_role(p.executor, names)}" if p.executor else ""
            click.echo(f"    task {p.task_id}: {p.phase.value}{who} (+{p.elapsed:.2f} s)")

        est = client.estimate(10 * CNX, 0, 1, always_audit=True)
        click.echo(f"    10 CNX for 1 image: T = {est.estimated_time} s, value {est.value / 1e18:.4f} CNX/s, "
                   f"queue position {est.queue_position}")
        image_args = {"base_model": model, "prompt": prompt, "negative_prompt": "blurry",
                      "task_config": {"image_width": size, "image_height": size, "steps": steps, "seed": 42,
                                      "num_images": 2 if tiny else 1, "cfg": 7.0}}
        img = phases.run("image task (alwaysAudit: three nodes)", client.generate_image, image_args, 10 * CNX,
                         always_audit=True, timeout=timeout, on_progress=show)
        paths = img.result.save(out / "images", stem=f"task-{img.task_id}")
        click.echo(f"    saved {', '.join(str(Path(p).relative_to(out.parent)) for p in paths)}")
        phases.run("wait for the audit to settle", client.wait, img, until="settled", timeout=timeout,
                   on_progress=show)

        text_args = {"model": text_model, "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one sentence about foxes."}],
            "generation_config": {"max_new_tokens": 24, "min_new_tokens": 8 if text_model.startswith("base:tiny-")
                                  else None, "do_sample": False}, "seed": 7}
        text_args["generation_config"] = {k: v for k, v in text_args["generation_config"].items() if v is not None}
        txt = phases.run("text task", client.generate_text, text_args, 5 * CNX, timeout=timeout, on_progress=show)
        (out / "text").mkdir(exist_ok=True)
        (out / "text" / f"task-{txt.task_id}.json").write_text(json.dumps(txt.result.response, indent=2,
                                                                          ensure_ascii=False))
        (out / "text" / f"task-{txt.task_id}.txt").write_text(txt.result.text + "\n")
        click.echo(f"    response: {txt.result.text[:200]!r}")
        reports = [("image", img), ("text", txt)]
        _summary(client, reports, names, phases, out)
        client.close()
    except (CrynuxError, LocalNetError) as exc:
        click.echo(f"demo failed: {type(exc).__name__}: {exc}", err=True)
        click.echo(f"logs: {net.logs_dir}", err=True)
        exit_code = 1
    finally:
        t = time.perf_counter()
        net.stop()
        phases.items.append(("shut down", time.perf_counter() - t))
    click.echo(f"shut down in {phases.items[-1][1]:.1f} s; total {time.perf_counter() - t_all:.1f} s; "
               f"logs in {net.logs_dir}")
    if exit_code:
        sys.exit(exit_code)


def _summary(client: Any, reports: list[tuple[str, Any]], names: dict[str, str], phases: Phases,
             out: Path) -> None:
    click.echo("\n================ summary ================")
    data: dict[str, Any] = {"tasks": [], "phases": {}}
    for kind, rep in reports:
        info = client.task(rep.task_id)
        click.echo(f"{kind} task {rep.task_id}: status {info['status'].name}, executor "
                   f"{_role(info['executor'], names)}, auditors "
                   f"{', '.join(_role(a, names) for a in info['auditors'] if int(a, 16)) or '-'}, "
                   f"fee {rep.fee / 1e18:g} CNX, argsHash {rep.args_hash[:18]}...")
        pt = rep.phase_times
        click.echo("  seconds after the createTask receipt: " +
                   ", ".join(f"{k} {v:.2f}" for k, v in pt.items()))
        click.echo(f"  application: upload args {rep.timings.get('upload_args_s', 0):.2f} s, create "
                   f"{rep.timings.get('create_s', 0):.2f} s, download {rep.timings.get('download_s', 0):.2f} s")
        txs = client.task_transactions(rep.task_id)
        click.echo(f"  {'transaction':<68} {'sender':<7} {'gas':>8}  events")
        for tx in txs:
            click.echo(f"  {tx['tx']:<68} {_role(tx['from'], names):<7} {tx['gas_used']:>8}  "
                       f"{', '.join(tx['events'])}")
        click.echo(f"  total gas {sum(t['gas_used'] for t in txs):,} in {len(txs)} transactions")
        data["tasks"].append({"kind": kind, "task_id": rep.task_id, "status": info["status"].name,
                              "phase_times": pt, "timings": rep.timings, "transactions": txs})
    click.echo("phases (wall clock):")
    for name, secs in phases.items:
        click.echo(f"  {name:<50} {secs:7.2f} s")
        data["phases"][name] = round(secs, 3)
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
