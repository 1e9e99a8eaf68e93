"""A small typed HTTP client of the relay API that signs its requests.

Used by the node client (download arguments, deliver results) and the SDK (upload
arguments, download results)::

    relay = RelayClient("http://127.0.0.1:8080", account)
    relay.put_args(args_bytes)                       # before createTask
    data = relay.get_task_args(task_id)              # a node assigned to the task
    relay.upload_results(task_id, [ResultUpload("0.png", png)], score, salt)
    files = relay.download_results(task_id)          # the creator, once delivered
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Sequence

import httpx
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from crynux_common.signing import sign_request

from .server.schemas import ArgsStored, Delivered, Health, NetworkStats, ResultManifest

log = logging.getLogger(__name__)


class RelayError(Exception):
    """The relay answered with an error status."""

    def __init__(self, status: int, code: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"relay answered {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        #: The relay's Retry-After (seconds) on a 429 or 503, else None.
        self.retry_after_s = retry_after_s


class RelayAuthError(RelayError):
    """401: missing, bad, expired or replayed signature."""


class RelayForbidden(RelayError):
    """403: the signer may not do this."""


class RelayNotFound(RelayError):
    """404: unknown task, arguments or file."""


class RelayConflict(RelayError):
    """409: not in a state that allows this (not delivered yet, already delivered, not committed)."""


class RelayGone(RelayError):
    """410: gone for good (a task's arguments that its creator never uploaded in time)."""


class RelayTooLarge(RelayError):
    """413: over a size limit."""


class RelayRejected(RelayError):
    """422: content does not match its hash, score or commitment."""


class RelayUnavailable(RelayError):
    """5xx: the relay or its chain connection is down; retry later."""


class RelayBusy(RelayError):
    """429: over a rate or concurrency limit (raised once the client's retries are spent)."""


class IntegrityError(Exception):
    """Downloaded bytes do not match the hash the relay or the chain gave for them."""


_BY_STATUS: dict[int, type[RelayError]] = {
    401: RelayAuthError, 403: RelayForbidden, 404: RelayNotFound, 409: RelayConflict, 410: RelayGone,
    413: RelayTooLarge, 422: RelayRejected, 429: RelayBusy,
}

#: Statuses the client retries after the relay's Retry-After: rate limits and a busy or
#: briefly unavailable relay (it refused before doing anything, so a retry is safe).
_RETRYABLE = frozenset({429, 503})


def _error_of(response: httpx.Response) -> RelayError:
    """The typed error of an error answer, with its Retry-After (seconds) when given."""
    try:
        payload = response.json()
        code, detail = str(payload.get("error", "error")), str(payload.get("detail", ""))
    except ValueError:
        code, detail = "error", response.text[:500]
    retry_after: float | None = None
    header = response.headers.get("Retry-After", "")
    if header.strip().isdigit():
        retry_after = float(header.strip())
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = RelayUnavailable if response.status_code >= 500 else RelayError
    return cls(response.status_code, code, detail, retry_after)


@dataclass(frozen=True)
class ResultUpload:
    """One result file to deliver."""

    name: str
    data: bytes
    content_type: str = "image/png"


def encode_multipart(fields: dict[str, str], files: Sequence[ResultUpload]) -> tuple[bytes, str]:
    """multipart/form-data bytes (fields, then every file as ``files``) and the content type."""
    boundary = "crynux" + secrets.token_hex(16)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
        )
    for f in files:
        filename = f.name.replace('"', "").replace("\r", "").replace("\n", "")
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
            f"Content-Type: {f.content_type}\r\n\r\n"
        )
        parts.append(head.encode() + f.data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class RelayClient:
    """Signed calls to one relay with one Ethereum account."""

    def __init__(
        self,
        base_url: str,
        account: LocalAccount | None = None,
        *,
        timeout: float = 120.0,
        http: httpx.Client | None = None,
        max_retry_wait_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.account = account
        #: Total seconds a call may spend waiting out 429/503 answers before it raises.
        self.max_retry_wait_s = max_retry_wait_s
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RelayClient":
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _request(
        self, method: str, target: str, body: bytes = b"", content_type: str | None = None, signed: bool = True
    ) -> httpx.Response:
        waited = 0.0
        while True:
            response = self._send(method, target, body, content_type, signed)
            if response.status_code < 400:
                return response
            error = _error_of(response)
            pause = error.retry_after_s
            if response.status_code not in _RETRYABLE or pause is None or waited + pause > self.max_retry_wait_s:
                raise error
            log.info("relay busy (%d %s) on %s %s: retrying in %.0f s", error.status, error.code, method, target, pause)
            time.sleep(pause)
            waited += pause

    def _send(
        self, method: str, target: str, body: bytes, content_type: str | None, signed: bool
    ) -> httpx.Response:
        """One attempt, signed afresh (a signature is good for one request only)."""
        headers: dict[str, str] = {}
        if content_type:
            headers["Content-Type"] = content_type
        if signed:
            if self.account is None:
                raise ValueError("this call is signed: give the client an account")
            headers.update(sign_request(self.account, method, target, body).as_dict())
        return self._http.request(method, target, content=body if body else None, headers=headers)

    # --- arguments ---------------------------------------------------------------------------

    def put_args(self, args: bytes) -> ArgsStored:
        """Uploads raw argument bytes (the JSON whose keccak256 is the task's argsHash)."""
        args_hash = "0x" + keccak(args).hex()
        r = self._request("PUT", f"/v1/args/{args_hash}", args, "application/json")
        return ArgsStored.model_validate(r.json())

    def get_own_args(self, args_hash: bytes | str) -> bytes:
        """Reads back arguments this account uploaded (RelayNotFound if it did not)."""
        h = args_hash if isinstance(args_hash, str) else "0x" + bytes(args_hash).hex()
        return self._request("GET", f"/v1/args/{h}").content

    def get_task_args(self, task_id: int, expected_hash: bytes | None = None) -> bytes:
        """The task's arguments; checked against ``expected_hash`` (the on-chain argsHash) if given."""
        data = self._request("GET", f"/v1/tasks/{task_id}/args").content
        if expected_hash is not None and keccak(data) != bytes(expected_hash):
            raise IntegrityError(f"the arguments of task {task_id} do not hash to the on-chain argsHash")
        return data

    # --- results -----------------------------------------------------------------------------

    def upload_results(
        self, task_id: int, files: Sequence[ResultUpload], score: bytes, salt: bytes
    ) -> Delivered:
        """Delivers the result files with the committed score and salt."""
        body, content_type = encode_multipart({"score": "0x" + score.hex(), "salt": "0x" + salt.hex()}, files)
        r = self._request("POST", f"/v1/tasks/{task_id}/results", body, content_type)
        return Delivered.model_validate(r.json())

    def get_results(self, task_id: int, wait: float = 0.0) -> ResultManifest:
        """The manifest of the delivered files. With `wait` (seconds, at most 30) the relay holds
        the request until the delivery is stored; RelayConflict if it is not by then."""
        target = f"/v1/tasks/{task_id}/results" + (f"?wait={wait:g}" if wait > 0 else "")
        return ResultManifest.model_validate(self._request("GET", target).json())

    def download_result(self, task_id: int, index: int, expected_sha256: str | None = None) -> bytes:
        r = self._request("GET", f"/v1/tasks/{task_id}/results/{index}")
        want = expected_sha256 or r.headers.get("X-Crynux-SHA256")
        if want and hashlib.sha256(r.content).hexdigest() != want:
            raise IntegrityError(f"result file {index} of task {task_id} does not match its SHA-256")
        return r.content

    def download_results(self, task_id: int) -> list[bytes]:
        """Every delivered file of the task, in order, each checked against its SHA-256."""
        manifest = self.get_results(task_id)
        return [self.download_result(task_id, f.index, f.sha256) for f in manifest.files]

    # --- public ------------------------------------------------------------------------------

    def stats(self) -> NetworkStats:
        return NetworkStats.model_validate(self._request("GET", "/v1/stats", signed=False).json())

    def health(self) -> Health:
        return Health.model_validate(self._request("GET", "/health", signed=False).json())

    def openapi(self) -> dict[str, Any]:
        return self._request("GET", "/openapi.json", signed=False).json()  # type: ignore[no-any-return]
