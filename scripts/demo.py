"""`make demo`: deploy the network to a local Anvil and show it working.

Grows with the project; for now it deploys the CNX token and prints its supply.
"""
from __future__ import annotations

import click
from ape import accounts, project
from ape.cli import ConnectedProviderCommand, network_option


@click.command(cls=ConnectedProviderCommand)
@network_option(default="ethereum:local:foundry")
def cli(network):
    deployer = accounts.test_accounts[0]
    treasury = accounts.test_accounts[1]
    token = deployer.deploy(project.CNXToken, deployer, treasury)
    supply = token.totalSupply() / 10**18
    click.echo(f"CNXToken deployed at {token.address} on {network}")
    click.echo(f"total supply {supply:,.0f} CNX (cap {token.cap() / 10**18:,.0f}), treasury {treasury.address}")
