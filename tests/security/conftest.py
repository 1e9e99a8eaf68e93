"""The security tests run on the market tests' wired contracts and helpers."""

from tests.market.conftest import *  # noqa: F401,F403  (fixtures: token, registry, market, helpers, ...)
