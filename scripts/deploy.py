"""Deploys the whole network to any Ape network and writes deployments/<network>.json.

    ape run deploy --network ethereum:local:foundry
    ape run deploy --network ethereum:sepolia:node --account my-key --relay 0x... \\
        --treasury 0x... --params config/params.yaml
"""
from __future__ import annotations

from pathlib import Path

import click
from ape import accounts, project
from ape.cli import ConnectedProviderCommand, account_option, network_option

from scripts._network import deploy_network, deployment_record, load_params


@click.command(cls=ConnectedProviderCommand)
@network_option()
@account_option()
@click.option("--treasury", default=None, help="Treasury address (default: the deployer).")
@click.option("--relay", default=None, help="Relay address given RELAY_ROLE (default: the deployer).")
@click.option("--params", "params_file", default="config/params.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="YAML parameters applied over the defaults.")
@click.option("--out", default=None, help="Deployment file (default: deployments/<network>.json).")
def cli(ecosystem, network, account, treasury, relay, params_file, out):
    deployer = account
    treasury = treasury or deployer.address
    relay = relay or deployer.address
    params = load_params(params_file if Path(params_file).exists() else None)
    contracts = deploy_network(project, deployer, treasury=treasury, relay=relay, params=params)
    name = f"{ecosystem.name}-{network.name}"
    record = deployment_record(name, contracts)
    path = Path(out or f"deployments/{name}.json")
    record.save(path)
    for cname, entry in record.contracts.items():
        click.echo(f"{cname:14} {entry.address}")
    click.echo(f"deployment written to {path}")
