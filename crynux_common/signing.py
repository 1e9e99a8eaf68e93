"""Request signing for the relay API (shared by the relay, the node client and the SDK).

Every write and every private read of the relay is signed with an Ethereum key
(EIP-191 ``personal_sign``) over a canonical message::

    crynux-relay-request-v1
    <METHOD>                      upper case, e.g. PUT
    <path?query>                  the request target exactly as sent, e.g. /v1/tasks/7/args
    <sha256 hex of the body>      lower-case hex, 64 chars (the hash of b"" for no body)
    <timestamp>                   unix seconds, decimal
    <address>                     the signer, lower-case 0x-hex
    <nonce>                       optional client-chosen string (may be empty)

The message travels in the headers :data:`HEADER_ADDRESS`, :data:`HEADER_TIMESTAMP`,
:data:`HEADER_SIGNATURE` and, optionally, :data:`HEADER_NONCE` (up to 64 characters of
``[A-Za-z0-9_-]``). The nonce lets a client send two otherwise identical requests in the
same second (signatures are deterministic, so they would look like a replay). The verifier recomputes the message from the request it
received, recovers the signer from the signature and checks that it is the claimed
address and that the timestamp is within ``window`` seconds of its clock. Replay
protection (remembering signatures seen within the window) is the verifier's job: see
``relay_client.server.auth``; it keys on :func:`replay_key`, the hash of the signed
message, so a malleated copy of a signature (same message, other ``s``) is a replay too.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Mapping

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import is_hex_address

HEADER_ADDRESS = "X-Crynux-Address"
HEADER_TIMESTAMP = "X-Crynux-Timestamp"
HEADER_SIGNATURE = "X-Crynux-Signature"
HEADER_NONCE = "X-Crynux-Nonce"
MESSAGE_PREFIX = "crynux-relay-request-v1"
DEFAULT_WINDOW_SECONDS = 60
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
#: Unix seconds as plain decimal digits; 12 digits reach the year 33658, and a bound keeps a
#: hostile header (hundreds of digits) from ever becoming a number too large for float arithmetic.
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")


class SignatureError(Exception):
    """A request's signature is missing, malformed, wrong or out of its time window."""


class MissingSignature(SignatureError):
    """One of the signature headers is absent."""


class MalformedSignature(SignatureError):
    """A signature header is present but cannot be parsed."""


class InvalidSignature(SignatureError):
    """The signature does not recover to the claimed address."""


class ExpiredTimestamp(SignatureError):
    """The signed timestamp is further than the window from the verifier's clock."""


def body_sha256(body: bytes) -> str:
    """Lower-case hex SHA-256 of a request body."""
    return hashlib.sha256(body).hexdigest()


def canonical_message(
    method: str, target: str, body_hash: str, timestamp: int, address: str, nonce: str = ""
) -> str:
    """The text that is signed for one request (see the module docstring)."""
    return "\n".join(
        [MESSAGE_PREFIX, method.upper(), target, body_hash.lower(), str(int(timestamp)), address.lower(), nonce]
    )


@dataclass(frozen=True)
class SignedHeaders:
    """The authentication headers of one request."""

    address: str
    timestamp: int
    signature: str
    nonce: str = ""

    def as_dict(self) -> dict[str, str]:
        headers = {
            HEADER_ADDRESS: self.address,
            HEADER_TIMESTAMP: str(self.timestamp),
            HEADER_SIGNATURE: self.signature,
        }
        if self.nonce:
            headers[HEADER_NONCE] = self.nonce
        return headers

    def message(self, method: str, target: str, body_hash: str) -> str:
        return canonical_message(method, target, body_hash, self.timestamp, self.address, self.nonce)


def replay_key(method: str, target: str, body_hash: str, headers: "SignedHeaders") -> str:
    """What a verifier remembers to reject a replay: SHA-256 hex of the signed message."""
    return hashlib.sha256(headers.message(method, target, body_hash).encode()).hexdigest()


def sign_request(
    account: LocalAccount,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    body_hash: str | None = None,
    nonce: str | None = None,
) -> SignedHeaders:
    """Signs a request with ``account``; ``target`` is the path with its query string.

    Pass ``body_hash`` instead of hashing ``body`` when the caller has streamed it already.
    A random nonce is used unless one is given (``""`` for none).
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    digest = body_hash if body_hash is not None else body_sha256(body)
    n = secrets.token_hex(8) if nonce is None else nonce
    if not _NONCE_RE.match(n):
        raise ValueError(f"nonce must match {_NONCE_RE.pattern}")
    message = canonical_message(method, target, digest, ts, account.address, n)
    signed = account.sign_message(encode_defunct(text=message))
    return SignedHeaders(
        address=account.address, timestamp=ts, signature="0x" + signed.signature.hex().removeprefix("0x"), nonce=n
    )


def parse_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """Reads the three headers (case-insensitive mapping), raising on missing or malformed ones."""
    address = headers.get(HEADER_ADDRESS)
    timestamp = headers.get(HEADER_TIMESTAMP)
    signature = headers.get(HEADER_SIGNATURE)
    if not address or not timestamp or not signature:
        raise MissingSignature(
            f"the headers {HEADER_ADDRESS}, {HEADER_TIMESTAMP} and {HEADER_SIGNATURE} are required"
        )
    if not is_hex_address(address):
        raise MalformedSignature(f"{HEADER_ADDRESS} is not an address: {address[:64]!r}")
    if not _TIMESTAMP_RE.match(timestamp):
        raise MalformedSignature(
            f"{HEADER_TIMESTAMP} must be unix seconds, 1 to 12 decimal digits: {timestamp[:32]!r}"
            + (f" ({len(timestamp)} characters)" if len(timestamp) > 32 else "")
        )
    ts = int(timestamp, 10)
    sig = signature.removeprefix("0x")
    if len(sig) != 130:
        raise MalformedSignature(f"{HEADER_SIGNATURE} must be 65 bytes of hex")
    try:
        bytes.fromhex(sig)
    except ValueError as exc:
        raise MalformedSignature(f"{HEADER_SIGNATURE} is not hex") from exc
    nonce = headers.get(HEADER_NONCE) or ""
    if not _NONCE_RE.match(nonce):
        raise MalformedSignature(f"{HEADER_NONCE} must match {_NONCE_RE.pattern}")
    return SignedHeaders(address=address, timestamp=ts, signature="0x" + sig.lower(), nonce=nonce)


def check_headers(
    headers: Mapping[str, str], *, now: float | None = None, window: int = DEFAULT_WINDOW_SECONDS
) -> SignedHeaders:
    """The cheap part of :func:`verify_request`: the headers are present, well formed and the
    timestamp is within the window. No signature recovery: a server can run it on every request
    before reading its body."""
    parsed = parse_headers(headers)
    clock = time.time() if now is None else now
    if abs(clock - parsed.timestamp) > window:
        raise ExpiredTimestamp(
            f"timestamp {parsed.timestamp} is {int(clock - parsed.timestamp)} s from the relay's clock"
            f" (window +-{window} s)"
        )
    return parsed


def verify_request(
    method: str,
    target: str,
    body_hash: str,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    window: int = DEFAULT_WINDOW_SECONDS,
) -> SignedHeaders:
    """Checks a request's signature; returns the parsed headers (the signer is ``.address``,
    checksummed) or raises a :class:`SignatureError`.
    """
    parsed = check_headers(headers, now=now, window=window)
    message = parsed.message(method, target, body_hash)
    try:
        recovered = Account.recover_message(encode_defunct(text=message), signature=parsed.signature)
    except Exception as exc:  # eth_keys raises several types for unrecoverable signatures
        raise InvalidSignature(f"signature cannot be recovered: {exc}") from exc
    if recovered.lower() != parsed.address.lower():
        raise InvalidSignature("the signature was not made by the claimed address over this request")
    return SignedHeaders(
        address=recovered, timestamp=parsed.timestamp, signature=parsed.signature, nonce=parsed.nonce
    )
