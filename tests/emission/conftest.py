"""Fixtures of the emission tests: the token and both mining contracts, with a test account
standing in for the registry and the market (REPORTER_ROLE)."""
from __future__ import annotations

import pytest
from hypothesis import settings


def tx_heavy_settings(**overrides) -> settings:
    """Settings for tests that send many transactions per example (about 0.1 s each on
    Anvil): half the current profile's examples (at least 10), so the quick profile stays
    within budget while HYPOTHESIS_PROFILE=long still goes deep."""
    return settings(settings.default, max_examples=max(10, settings.default.max_examples // 2), **overrides)


@pytest.fixture(scope="session")
def reporter(accounts):
    """Stands in for the registry / task market: holds REPORTER_ROLE on both contracts."""
    return accounts[4]


@pytest.fixture(scope="session")
def nodes(accounts, chain):
    """Five node operators (they claim their own rewards): generated accounts holding ETH and
    no CNX, used by no other package, so balances start at zero whatever ran before."""
    out = []
    for _ in range(5):
        a = accounts.generate_test_account()
        chain.provider.set_balance(a.address, 10**21)
        out.append(a)
    return out


def deploy_node_mining(project, token, owner, reporter, start: int = 0):
    nm = owner.deploy(project.NodeMining, token, owner, start)
    token.grantRole(token.MINTER_ROLE(), nm, sender=owner)
    nm.grantRole(nm.REPORTER_ROLE(), reporter, sender=owner)
    return nm


def deploy_task_mining(project, token, owner, reporter, start: int = 0):
    tm = owner.deploy(project.TaskMining, token, owner, start)
    token.grantRole(token.MINTER_ROLE(), tm, sender=owner)
    tm.grantRole(tm.REPORTER_ROLE(), reporter, sender=owner)
    return tm


@pytest.fixture
def node_mining(project, token, owner, reporter):
    """NodeMining starting at its deployment block, minter of `token`."""
    return deploy_node_mining(project, token, owner, reporter)


@pytest.fixture
def task_mining(project, token, owner, reporter):
    """TaskMining starting at its deployment block, minter of `token`."""
    return deploy_task_mining(project, token, owner, reporter)
