"""Fixtures shared by every test: role accounts, the deployed contracts, hypothesis profiles."""
from __future__ import annotations

import os

import ape
import pytest
from hypothesis import HealthCheck, settings

# Quick and reproducible by default (CI budget; the same examples on every run, so a run that
# passed here passes on a clean clone); `make test-long` (HYPOTHESIS_PROFILE=long) draws
# fresh random examples and goes deeper.
settings.register_profile(
    "default",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

CNX = 10**18

#: The slowest modules (serial seconds on a 2-core machine: 150, 81, 75, 45, 41, 32, 32),
#: collected first. `make test` runs pytest-xdist with --dist loadfile: each worker takes whole
#: modules in collection order, so starting with the long ones lets the workers end together.
SLOW_MODULES = (
    "tests/e2e/test_network.py",
    "tests/market/test_market_fsm.py",
    "tests/loop/test_audit.py",
    "tests/registry/test_selection.py",
    "tests/loop/test_executor.py",
    "tests/emission/test_invariants.py",
    "tests/relay/test_openapi_fuzz.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow modules first; every module's tests stay together and in file order (stable sort)."""
    rank = {module: i for i, module in enumerate(SLOW_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture(scope="session")
def owner(accounts):
    """Deployer and governance (DEFAULT_ADMIN_ROLE)."""
    return accounts[0]


@pytest.fixture(scope="session")
def treasury(accounts):
    return accounts[1]


@pytest.fixture(scope="session")
def alice(accounts):
    return accounts[2]


@pytest.fixture(scope="session")
def bob(accounts):
    return accounts[3]


@pytest.fixture(scope="session")
def token(project, owner, treasury):
    return owner.deploy(project.CNXToken, owner, treasury)


@pytest.fixture(scope="session")
def rpc_url(chain) -> str:  # type: ignore[no-untyped-def]
    """The JSON-RPC URL of the Anvil that ape-foundry started for this session (for the
    relay, node and SDK processes and clients that tests start beside Ape)."""
    provider = chain.provider
    uri = getattr(provider, "uri", None) or provider.web3.provider.endpoint_uri
    assert uri and uri.startswith("http"), f"unexpected provider URI {uri!r}"
    return str(uri)
