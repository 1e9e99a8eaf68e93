"""schemathesis against the relay's /openapi.json: whatever it sends, no 5xx.

Each generated request is sent twice: as generated (random or missing signature headers)
and signed by a network account, so that the checks behind authentication run too.
"""
from __future__ import annotations

import random

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from crynux_common.signing import sign_request

from .helpers import RelayProcess
from .network import Network


class SignAuth(requests.auth.AuthBase):
    """Signs the final prepared request (method, path with query, body) like RelayClient does."""

    def __init__(self, accounts: list) -> None:
        self._accounts = accounts
        self._rnd = random.Random(0)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        account = self._rnd.choice(self._accounts)
        r.headers.update(sign_request(account, r.method or "GET", r.path_url, body).as_dict())
        return r


@pytest.fixture(scope="module")
def relay_schema(relay_proc: RelayProcess):
    return schemathesis.openapi.from_url(relay_proc.url + "/openapi.json")


@pytest.fixture(scope="module")
def signed_session(network: Network) -> requests.Session:
    session = requests.Session()
    session.auth = SignAuth([network.local(a) for a in [network.creator, network.other_app, *network.nodes]])
    return session


schema = schemathesis.pytest.from_fixture("relay_schema")


@schema.parametrize()
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_api_neverAnswers5xx(case, relay_proc: RelayProcess, signed_session: requests.Session):
    plain = case.call(base_url=relay_proc.url, timeout=30)
    assert plain.status_code < 500, f"{case.method} {case.formatted_path}: {plain.status_code} {plain.text[:300]}"
    signed = case.call(base_url=relay_proc.url, session=signed_session, timeout=30)
    assert signed.status_code < 500, f"{case.method} {case.formatted_path}: {signed.status_code} {signed.text[:300]}"
