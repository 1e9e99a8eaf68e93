"""Hostile upload content against a real relay process (and the real contracts on Anvil):
decompression bombs, animated PNGs, bytes after IEND, argument and result JSON with duplicate
keys or nested 1000 deep. Each is refused with its status and error code, quickly, without
the relay's memory growing, and nothing is stored or attested."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_utils import keccak

from crynux_common import scores
from crynux_common.schemas import TaskType, canonical_json
from crynux_common.signing import sign_request
from relay_client.client import RelayClient, RelayNotFound, ResultUpload, encode_multipart

from .helpers import RelayProcess
from .hostile import PeakMemory, apng, bomb_png, corrupt_idat
from .network import Network, image_args, png, text_args

#: The relay's memory may grow this much while it refuses a bomb (it grew 844 MB before).
MAX_EXTRA_MB = 100
#: A refusal is answered this fast (a bomb took 15 s before).
MAX_ANSWER_S = 3.0


@dataclass
class Task:
    task_id: int
    executor: Any
    files: list[ResultUpload]
    score: bytes
    salt: bytes


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = bomb_png(13300, 13300)
    assert len(data) < 600 * 1024
    return data


def image_task(network: Network, relay: RelayProcess, num_images: int = 1, *, upload_args: bool = True) -> Task:
    """An image task (64 x 64 arguments) whose executor committed the score of honest files."""
    seed = network.next_seed()
    args = image_args(seed, num_images)
    if upload_args:
        RelayClient(relay.url, network.local(network.creator)).put_args(args)
    task_id = network.create_task(args, num_images=num_images)
    executor = network.executor(task_id)
    files = [ResultUpload(f"{i}.png", png(seed * 10 + i)) for i in range(num_images)]
    score, salt = scores.image_score([f.data for f in files]), scores.new_salt()
    network.commit(task_id, executor, score, salt)
    return Task(task_id, executor, files, score, salt)


def text_task(network: Network, relay: RelayProcess, result: bytes) -> Task:
    """A text task whose executor committed the score of ``result`` (hostile or not)."""
    args = text_args(network.next_seed())
    RelayClient(relay.url, network.local(network.creator)).put_args(args)
    task_id = network.create_task(args, task_type=TaskType.TEXT)
    executor = network.executor(task_id)
    score, salt = scores.text_score(result), scores.new_salt()
    network.commit(task_id, executor, score, salt)
    return Task(task_id, executor, [ResultUpload("result.json", result, "application/json")], score, salt)


def deliver(relay: RelayProcess, network: Network, t: Task, files: list[bytes] | None = None, *,
            score: bytes | None = None, salt: bytes | None = None) -> httpx.Response:
    uploads = t.files if files is None else [ResultUpload(f"{i}.png", d) for i, d in enumerate(files)]
    fields = {"score": "0x" + (t.score if score is None else score).hex(),
              "salt": "0x" + (t.salt if salt is None else salt).hex()}
    body, ctype = encode_multipart(fields, uploads)
    target = f"/v1/tasks/{t.task_id}/results"
    headers = sign_request(network.local(t.executor), "POST", target, body).as_dict()
    return httpx.post(relay.url + target, content=body, headers={**headers, "Content-Type": ctype}, timeout=120)


def put_args(relay: RelayProcess, network: Network, body: bytes) -> httpx.Response:
    target = "/v1/args/0x" + keccak(body).hex()
    headers = sign_request(network.local(network.creator), "PUT", target, body).as_dict()
    return httpx.put(relay.url + target, content=body, headers=headers, timeout=60)


def snapshot(network: Network, relay: RelayProcess, task_ids: list[int]) -> tuple:
    """The relay's stored files and counts, and the tasks on-chain."""
    files = sorted((str(p.relative_to(relay.data)), p.stat().st_size)
                   for p in (relay.data / "blobs").rglob("*") if p.is_file())
    storage = httpx.get(relay.url + "/v1/stats").json()["storage"]
    chain = [(t.status, t.delivered) for t in map(network.task, task_ids)]
    return files, storage, chain


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code, response.text


# --- decompression bombs ---------------------------------------------------------------------


def test_bombPng_refusedBeforeDecode(network: Network, relay_proc: RelayProcess, bomb: bytes):
    """13300 x 13300 zero pixels in 0.5 MB, sent with the executor's committed score and salt
    (the commitment matches): refused from its header, the relay's memory flat; the honest
    delivery still goes through afterwards."""
    t = image_task(network, relay_proc)
    before = snapshot(network, relay_proc, [t.task_id])
    with PeakMemory(relay_proc.proc.pid) as mem:
        t0 = time.monotonic()
        response = deliver(relay_proc, network, t, [bomb])
        elapsed = time.monotonic() - t0
    assert_refused(response, 422, "wrong_image_size")
    assert "13300 x 13300" in response.json()["detail"]
    assert elapsed < MAX_ANSWER_S, f"answered after {elapsed:.1f} s"
    assert mem.extra_mb < MAX_EXTRA_MB, f"the relay's memory grew {mem.extra_mb:.0f} MB"
    assert snapshot(network, relay_proc, [t.task_id]) == before
    assert deliver(relay_proc, network, t).status_code == 201


def test_tenBombsInOneDelivery_refusedQuickly(network: Network, relay_proc: RelayProcess, bomb: bytes):
    """Ten bombs in one delivery held a worker for 105 s; now answered at once."""
    t = image_task(network, relay_proc, 10)
    before = snapshot(network, relay_proc, [t.task_id])
    with PeakMemory(relay_proc.proc.pid) as mem:
        t0 = time.monotonic()
        response = deliver(relay_proc, network, t, [bomb] * 10)
        elapsed = time.monotonic() - t0
    assert_refused(response, 422, "wrong_image_size")
    assert elapsed < MAX_ANSWER_S, f"answered after {elapsed:.1f} s"
    assert mem.extra_mb < MAX_EXTRA_MB, f"the relay's memory grew {mem.extra_mb:.0f} MB"
    assert snapshot(network, relay_proc, [t.task_id]) == before


def test_bombPng_taskArgsNotUploaded_refusedByTheSizeCap(network: Network, relay_proc: RelayProcess,
                                                         bomb: bytes):
    """Without the task's arguments the relay bounds images at 2048 x 2048."""
    t = image_task(network, relay_proc, upload_args=False)
    before = snapshot(network, relay_proc, [t.task_id])
    t0 = time.monotonic()
    response = deliver(relay_proc, network, t, [bomb])
    assert time.monotonic() - t0 < MAX_ANSWER_S
    assert_refused(response, 422, "wrong_image_size")
    assert "2048" in response.json()["detail"]
    assert snapshot(network, relay_proc, [t.task_id]) == before


def test_imageOfAnotherSize_refused(network: Network, relay_proc: RelayProcess):
    t = image_task(network, relay_proc)
    other = png(network.next_seed(), size=72)  # the arguments ask for 64 x 64
    before = snapshot(network, relay_proc, [t.task_id])
    response = deliver(relay_proc, network, t, [other], score=scores.image_score([other]))
    assert_refused(response, 422, "wrong_image_size")
    assert snapshot(network, relay_proc, [t.task_id]) == before


def test_undecodablePngWithWrongSalt_commitmentCheckedBeforeDecode(network: Network, relay_proc: RelayProcess):
    """Image data that would fail to inflate, sent with a salt that does not match the
    commitment: the answer is the commitment's, so the relay did not decode first."""
    t = image_task(network, relay_proc)
    broken = corrupt_idat(t.files[0].data)
    before = snapshot(network, relay_proc, [t.task_id])
    assert_refused(deliver(relay_proc, network, t, [broken], salt=bytes(32)), 422, "commitment_mismatch")
    assert_refused(deliver(relay_proc, network, t, [broken]), 400, "not_png")  # decoded once it matches
    assert snapshot(network, relay_proc, [t.task_id]) == before


# --- PNG structure -------------------------------------------------------------------------------


def test_apng_refused(network: Network, relay_proc: RelayProcess):
    """A default image (scored) that differs from its animation frame (shown by browsers)."""
    t = image_task(network, relay_proc)
    animated = apng(t.files[0].data, png(network.next_seed()))
    before = snapshot(network, relay_proc, [t.task_id])
    response = deliver(relay_proc, network, t, [animated])  # its default image has the committed score
    assert_refused(response, 400, "animated_png")
    assert snapshot(network, relay_proc, [t.task_id]) == before


def test_pngWithBytesAfterIend_refused(network: Network, relay_proc: RelayProcess):
    t = image_task(network, relay_proc)
    trailing = t.files[0].data + b"<script>alert(1)</script>"
    before = snapshot(network, relay_proc, [t.task_id])
    assert_refused(deliver(relay_proc, network, t, [trailing]), 400, "data_after_iend")
    assert snapshot(network, relay_proc, [t.task_id]) == before
    assert deliver(relay_proc, network, t).status_code == 201


# --- JSON: duplicate keys, deep nesting ----------------------------------------------------------

DUPLICATE_KEYS = (b'{"base_model":"tiny-sd","prompt":"a cat","prompt":"a dog","task_config":{"seed":1},'
                  b'"version":"1.0"}')
NESTED_1000 = b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}"


@pytest.mark.parametrize("body,code", [(DUPLICATE_KEYS, "duplicate_json_key"), (NESTED_1000, "json_too_deep")],
                         ids=["duplicate keys", "nested 1000 deep"])
def test_hostileArgumentJson_refusedAndNotStored(network: Network, relay_proc: RelayProcess, body: bytes,
                                                 code: str):
    before = snapshot(network, relay_proc, [])
    assert_refused(put_args(relay_proc, network, body), 400, code)
    assert snapshot(network, relay_proc, []) == before
    with pytest.raises(RelayNotFound):
        RelayClient(relay_proc.url, network.local(network.creator)).get_own_args(keccak(body))


def test_argumentJsonNested32Deep_accepted(network: Network, relay_proc: RelayProcess):
    body = b'{"a":' + b"[" * 31 + b"]" * 31 + b"}"
    assert put_args(relay_proc, network, body).status_code == 201


@pytest.mark.parametrize(
    "result,code",
    [(b'{"choices":[],"model":"a","model":"b"}', "duplicate_json_key"), (NESTED_1000, "json_too_deep")],
    ids=["duplicate keys", "nested 1000 deep"],
)
def test_hostileTextResult_refusedAndNotStored(network: Network, relay_proc: RelayProcess, result: bytes,
                                               code: str):
    """Committed by the executor (its commitment matches), refused for its content."""
    t = text_task(network, relay_proc, result)
    before = snapshot(network, relay_proc, [t.task_id])
    assert_refused(deliver(relay_proc, network, t), 400, code)
    assert snapshot(network, relay_proc, [t.task_id]) == before


def test_textResultOver1MiB_refusedBeforeParsing(network: Network, relay_proc: RelayProcess):
    t = text_task(network, relay_proc, canonical_json({"pad": "x" * (1024 * 1024)}))
    before = snapshot(network, relay_proc, [t.task_id])
    assert_refused(deliver(relay_proc, network, t), 413, "too_large")
    assert snapshot(network, relay_proc, [t.task_id]) == before
