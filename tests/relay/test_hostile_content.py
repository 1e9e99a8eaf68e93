"""Hostile upload content against a real relay process (and the real contracts on Anvil):
decompression bombs, animated PNGs, bytes after IEND, argument and result JSON with duplicate
keys or nested 1000 deep. Each is refused with its status and error code, quickly, without
the relay's memory growing, and nothing is stored or attested."""
from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_utils import keccak
from PIL import Image, PngImagePlugin

from crynux_common import scores
from crynux_common.schemas import TaskType, canonical_json
from crynux_common.signing import sign_request
from relay_client.client import RelayClient, RelayNotFound, ResultUpload, encode_multipart
from relay_client.server.png_check import PngRejected, inspect_png

from .helpers import RelayProcess
from .hostile import PNG_SIGNATURE, PeakMemory, apng, bomb_png, chunk, chunks, corrupt_idat
from .network import Network, image_args, png, text_args

#: The relay's memory may grow this much while it refuses a bomb (it grew 844 MB before).
MAX_EXTRA_MB = 100
#: A refusal is answered this fast (a bomb took 15 s before).
MAX_ANSWER_S = 10.0  # generous for a loaded machine: the decode it replaces took 15 s idle


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


def finish(network: Network, relay: RelayProcess, t: Task, *, honest: bool = True) -> None:
    """Ends the task so its executor takes the next one: the honest delivery still goes
    through after the refusals; a task committed to hostile content is timed out."""
    if honest:
        r = deliver(relay, network, t)
        assert r.status_code == 201, r.text
        return
    task = network.task(t.task_id)
    network.chain_sleep(int(task.deadline) - int(task.startTime) + 5)
    network.market.timeout(t.task_id, sender=network.other_app)


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
    finish(network, relay_proc, t)


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
    finish(network, relay_proc, t)


def test_threeBombsAtOnce_memoryStaysFlat(network: Network, relay_proc: RelayProcess, bomb: bytes):
    """Three executors at once (+2.5 GB before)."""
    tasks = [image_task(network, relay_proc) for _ in range(3)]
    before = snapshot(network, relay_proc, [t.task_id for t in tasks])
    with PeakMemory(relay_proc.proc.pid) as mem, ThreadPoolExecutor(3) as pool:
        t0 = time.monotonic()
        responses = list(pool.map(lambda t: deliver(relay_proc, network, t, [bomb]), tasks))
        elapsed = time.monotonic() - t0
    for r in responses:
        assert_refused(r, 422, "wrong_image_size")
    assert elapsed < MAX_ANSWER_S, f"answered after {elapsed:.1f} s"
    assert mem.extra_mb < MAX_EXTRA_MB, f"the relay's memory grew {mem.extra_mb:.0f} MB"
    assert snapshot(network, relay_proc, [t.task_id for t in tasks]) == before
    for t in tasks:
        finish(network, relay_proc, t)


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
    finish(network, relay_proc, t)


def test_imageOfAnotherSize_refused(network: Network, relay_proc: RelayProcess):
    t = image_task(network, relay_proc)
    other = png(network.next_seed(), size=72)  # the arguments ask for 64 x 64
    before = snapshot(network, relay_proc, [t.task_id])
    response = deliver(relay_proc, network, t, [other], score=scores.image_score([other]))
    assert_refused(response, 422, "wrong_image_size")
    assert snapshot(network, relay_proc, [t.task_id]) == before
    finish(network, relay_proc, t)


def test_undecodablePngWithWrongSalt_commitmentCheckedBeforeDecode(network: Network, relay_proc: RelayProcess):
    """Image data that would fail to inflate, sent with a salt that does not match the
    commitment: the answer is the commitment's, so the relay did not decode first."""
    t = image_task(network, relay_proc)
    broken = corrupt_idat(t.files[0].data)
    before = snapshot(network, relay_proc, [t.task_id])
    assert_refused(deliver(relay_proc, network, t, [broken], salt=bytes(32)), 422, "commitment_mismatch")
    assert_refused(deliver(relay_proc, network, t, [broken]), 400, "not_png")  # decoded once it matches
    assert snapshot(network, relay_proc, [t.task_id]) == before
    finish(network, relay_proc, t)


# --- PNG structure -------------------------------------------------------------------------------


def test_apng_refused(network: Network, relay_proc: RelayProcess):
    """A default image (scored) that differs from its animation frame (shown by browsers)."""
    t = image_task(network, relay_proc)
    animated = apng(t.files[0].data, png(network.next_seed()))
    before = snapshot(network, relay_proc, [t.task_id])
    response = deliver(relay_proc, network, t, [animated])  # its default image has the committed score
    assert_refused(response, 400, "animated_png")
    assert snapshot(network, relay_proc, [t.task_id]) == before
    finish(network, relay_proc, t)


def test_pngWithBytesAfterIend_refused(network: Network, relay_proc: RelayProcess):
    t = image_task(network, relay_proc)
    trailing = t.files[0].data + b"<script>alert(1)</script>"
    before = snapshot(network, relay_proc, [t.task_id])
    assert_refused(deliver(relay_proc, network, t, [trailing]), 400, "data_after_iend")
    assert snapshot(network, relay_proc, [t.task_id]) == before
    finish(network, relay_proc, t)


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
    finish(network, relay_proc, t, honest=False)


def test_textResultOver1MiB_refusedBeforeParsing(network: Network, relay_proc: RelayProcess):
    t = text_task(network, relay_proc, canonical_json({"pad": "x" * (1024 * 1024)}))
    before = snapshot(network, relay_proc, [t.task_id])
    assert_refused(deliver(relay_proc, network, t), 413, "too_large")
    assert snapshot(network, relay_proc, [t.task_id]) == before
    finish(network, relay_proc, t, honest=False)


# --- the chunk walk on its own (no relay) --------------------------------------------------------


def _save(img: Image.Image, **kw: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", **kw)
    return out.getvalue()


@pytest.mark.parametrize("data", [
    _save(Image.new("RGB", (64, 48))),
    _save(Image.new("RGBA", (64, 48)), optimize=True),
    _save(Image.new("P", (64, 48)), transparency=0),
    _save(Image.new("I;16", (64, 48))),
    _save(Image.new("RGB", (64, 48)), icc_profile=b"\0" * 4000),
], ids=["rgb", "rgba", "palette+tRNS", "16-bit grey", "iCCP"])
def test_inspectPng_readsTheHeaderOfStillImages(data: bytes):
    info = inspect_png(io.BytesIO(data))
    assert (info.width, info.height) == (64, 48)


def _zipped_text(size: int) -> bytes:
    meta = PngImagePlugin.PngInfo()
    meta.add_text("comment", "a" * size, zip=True)
    return _save(Image.new("RGB", (64, 64)), pnginfo=meta)


def _reordered(png_bytes: bytes) -> bytes:
    parsed = chunks(png_bytes)
    return PNG_SIGNATURE + b"".join(chunk(t, d) for t, d in [parsed[1], parsed[0], *parsed[2:]])


def _no_idat(png_bytes: bytes) -> bytes:
    return PNG_SIGNATURE + b"".join(chunk(t, d) for t, d in chunks(png_bytes) if t != b"IDAT")


def _bad_crc(png_bytes: bytes) -> bytes:
    return png_bytes[:-5] + bytes([png_bytes[-5] ^ 1]) + png_bytes[-4:]


@pytest.mark.parametrize("make,code", [
    (lambda p: apng(p, p), "animated_png"),
    (lambda p: p + b"\0", "data_after_iend"),
    (lambda p: p[:-12], "not_png"),  # no IEND
    (lambda p: _reordered(_save(Image.new("RGB", (8, 8)), dpi=(72, 72))), "not_png"),  # IHDR not first
    (_no_idat, "not_png"),
    (_bad_crc, "not_png"),
    (lambda p: _zipped_text(2 * 1024 * 1024), "png_metadata_too_large"),  # 2 MB of text in a few KB
], ids=["APNG", "after IEND", "no IEND", "IHDR not first", "no IDAT", "bad CRC", "zTXt bomb"])
def test_inspectPng_refusesWhatIsNotOneStillPng(make: Any, code: str):
    with pytest.raises(PngRejected) as err:
        inspect_png(io.BytesIO(make(png(1))))
    assert err.value.code == code


def test_inspectPng_bombIsReadFromItsHeaderAlone(bomb: bytes):
    t0 = time.monotonic()
    info = inspect_png(io.BytesIO(bomb))
    assert (info.width, info.height) == (13300, 13300) and time.monotonic() - t0 < 2.0
