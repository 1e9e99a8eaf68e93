"""crynux_common.signing: the request signature shared by the relay, the node and the SDK."""
from __future__ import annotations

import pytest
from eth_account import Account
from eth_keys import keys
from hypothesis import given
from hypothesis import strategies as st

from crynux_common.signing import (
    HEADER_ADDRESS,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    ExpiredTimestamp,
    InvalidSignature,
    MalformedSignature,
    MissingSignature,
    body_sha256,
    canonical_message,
    replay_key,
    sign_request,
    verify_request,
)

ALICE = Account.from_key("0x" + "11" * 32)
BOB = Account.from_key("0x" + "22" * 32)
NOW = 1_800_000_000
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _signed(method="PUT", target="/v1/args/0xab", body=b"{}", ts=NOW, account=ALICE, nonce="n1"):
    return sign_request(account, method, target, body, timestamp=ts, nonce=nonce).as_dict()


def test_verify_acceptsItsOwnSignature():
    headers = _signed()
    parsed = verify_request("PUT", "/v1/args/0xab", body_sha256(b"{}"), headers, now=NOW)
    assert parsed.address == ALICE.address
    assert parsed.nonce == "n1"


def test_canonicalMessage_isTheDocumentedLayout():
    msg = canonical_message("put", "/v1/x?a=1", "AB" * 32, 5, ALICE.address, "n")
    assert msg.split("\n") == [
        "crynux-relay-request-v1", "PUT", "/v1/x?a=1", "ab" * 32, "5", ALICE.address.lower(), "n"
    ]


@pytest.mark.parametrize(
    "change",
    ["method", "target", "query", "body", "timestamp", "address", "nonce"],
)
def test_verify_failsIfAnySignedPartChanges(change):
    headers = _signed(target="/v1/tasks/1/args?x=1")
    method, target, body = "PUT", "/v1/tasks/1/args?x=1", b"{}"
    if change == "method":
        method = "POST"
    elif change == "target":
        target = "/v1/tasks/2/args?x=1"
    elif change == "query":
        target = "/v1/tasks/1/args?x=2"
    elif change == "body":
        body = b"{ }"
    elif change == "timestamp":
        headers[HEADER_TIMESTAMP] = str(NOW + 1)
    elif change == "address":
        headers[HEADER_ADDRESS] = BOB.address
    elif change == "nonce":
        headers[HEADER_NONCE] = "n2"
    with pytest.raises(InvalidSignature):
        verify_request(method, target, body_sha256(body), headers, now=NOW)


@pytest.mark.parametrize("skew,ok", [(-60, True), (60, True), (-61, False), (61, False), (3600, False)])
def test_verify_enforcesTheTimeWindow(skew, ok):
    headers = _signed(ts=NOW + skew)
    if ok:
        verify_request("PUT", "/v1/args/0xab", body_sha256(b"{}"), headers, now=NOW)
    else:
        with pytest.raises(ExpiredTimestamp):
            verify_request("PUT", "/v1/args/0xab", body_sha256(b"{}"), headers, now=NOW)


@pytest.mark.parametrize("missing", [HEADER_ADDRESS, HEADER_TIMESTAMP, HEADER_SIGNATURE])
def test_verify_failsIfAHeaderIsMissing(missing):
    headers = _signed()
    del headers[missing]
    with pytest.raises(MissingSignature):
        verify_request("PUT", "/v1/args/0xab", body_sha256(b"{}"), headers, now=NOW)


@pytest.mark.parametrize(
    "header,value",
    [
        (HEADER_ADDRESS, "0x1234"),
        (HEADER_TIMESTAMP, "soon"),
        (HEADER_SIGNATURE, "0xzz"),
        (HEADER_SIGNATURE, "0x" + "zz" * 65),
        (HEADER_NONCE, "with space"),
    ],
)
def test_verify_failsIfAHeaderIsMalformed(header, value):
    headers = _signed()
    headers[header] = value
    with pytest.raises(MalformedSignature):
        verify_request("PUT", "/v1/args/0xab", body_sha256(b"{}"), headers, now=NOW)


def test_verify_failsIfSignatureIsUnrecoverable():
    headers = _signed()
    headers[HEADER_SIGNATURE] = "0x" + "00" * 65
    with pytest.raises(InvalidSignature):
        verify_request("PUT", "/v1/args/0xab", body_sha256(b"{}"), headers, now=NOW)


def test_replayKey_isTheSameForAMalleatedSignature():
    """(r, n - s, v ^ 1) recovers the same signer: it must count as the same request."""
    headers = _signed()
    sig = bytes.fromhex(headers[HEADER_SIGNATURE][2:])
    r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    flipped = r.to_bytes(32, "big") + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    malleated = dict(headers, **{HEADER_SIGNATURE: "0x" + flipped.hex()})
    digest = body_sha256(b"{}")
    try:
        second = verify_request("PUT", "/v1/args/0xab", digest, malleated, now=NOW)
    except InvalidSignature:
        return  # the library refuses high-s signatures: nothing to replay
    first = verify_request("PUT", "/v1/args/0xab", digest, headers, now=NOW)
    assert second.signature != first.signature
    assert replay_key("PUT", "/v1/args/0xab", digest, first) == replay_key("PUT", "/v1/args/0xab", digest, second)


def test_signRequest_usesAFreshNonceByDefault():
    a = sign_request(ALICE, "GET", "/v1/tasks/1/args", timestamp=NOW)
    b = sign_request(ALICE, "GET", "/v1/tasks/1/args", timestamp=NOW)
    assert a.nonce != b.nonce and a.signature != b.signature


@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE"]),
    target=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=80).map(lambda t: "/" + t),
    body=st.binary(max_size=512),
    key=st.binary(min_size=32, max_size=32).filter(lambda k: 0 < int.from_bytes(k, "big") < SECP256K1_N),
)
def test_signThenVerify_roundTripsForAnyRequest(method, target, body, key):
    account = Account.from_key(key)
    headers = sign_request(account, method, target, body, timestamp=NOW).as_dict()
    parsed = verify_request(method, target, body_sha256(body), headers, now=NOW)
    assert parsed.address == keys.PrivateKey(key).public_key.to_checksum_address()
