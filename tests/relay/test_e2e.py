"""The relay process against the real contracts on Anvil, driven over HTTP.

Happy paths of every endpoint, then a table of bad requests: each has its status code, its
error code and a check that nothing changed (the relay's database and files, and the task
on-chain).
"""
from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import pytest
from eth_account import Account
from eth_utils import keccak

from crynux_common import scores
from crynux_common.enums import TaskStatus
from crynux_common.schemas import TaskType, canonical_json
from crynux_common.signing import sign_request
from relay_client.client import (
    RelayClient,
    RelayConflict,
    RelayForbidden,
    RelayGone,
    RelayNotFound,
    ResultUpload,
    encode_multipart,
)

from .helpers import RelayProcess
from .network import Network, image_args, noise_png, png, text_args

MiB = 1024 * 1024


def client(relay: RelayProcess, network: Network, who: Any) -> RelayClient:
    return RelayClient(relay.url, network.local(who))


@dataclass
class Committed:
    """A task whose executor has committed but not delivered, with a valid delivery at hand."""

    task_id: int
    executor: Any
    files: list[ResultUpload]
    score: bytes
    salt: bytes
    args: bytes


def committed_image_task(network: Network, relay: RelayProcess, num_images: int = 2, **kw: Any) -> Committed:
    seed = network.next_seed()
    args = image_args(seed, num_images)
    client(relay, network, kw.get("creator", network.creator)).put_args(args)
    task_id = network.create_task(args, num_images=num_images, **kw)
    executor = network.executor(task_id)
    files = [ResultUpload(f"{i}.png", png(seed * 10 + i)) for i in range(num_images)]
    score = scores.image_score([f.data for f in files])
    salt = scores.new_salt()
    network.commit(task_id, executor, score, salt)
    return Committed(task_id, executor, files, score, salt, args)


# --- happy paths ------------------------------------------------------------------------------


def test_imageTask_argsResultsAndAttestation(network: Network, relay_proc: RelayProcess):
    creator = client(relay_proc, network, network.creator)
    args = image_args(network.next_seed(), 2)
    stored = creator.put_args(args)
    assert stored.created and stored.args_hash == "0x" + keccak(args).hex() and stored.size == len(args)
    assert creator.put_args(args).created is False  # idempotent
    assert creator.get_own_args(keccak(args)) == args

    task_id = network.create_task(args, num_images=2)
    task = network.task(task_id)
    executor = network.ape_account(task.executor)
    node = client(relay_proc, network, executor)
    assert node.get_task_args(task_id, expected_hash=keccak(args)) == args

    files = [ResultUpload("0.png", png(1)), ResultUpload("1.png", png(2))]
    score = scores.image_score([f.data for f in files])
    salt = scores.new_salt()
    network.commit(task_id, executor, score, salt)
    delivered = node.upload_results(task_id, files, score, salt)
    assert delivered.attestation.state == "mined" and delivered.attestation.tx_hash
    assert delivered.score == "0x" + score.hex() and [f.size for f in delivered.files] == [len(f.data) for f in files]
    after = network.task(task_id)
    assert after.delivered and after.status == TaskStatus.SUCCESS

    manifest = creator.get_results(task_id)
    assert manifest.attest_tx == delivered.attestation.tx_hash and manifest.node.lower() == executor.address.lower()
    assert creator.download_results(task_id) == [f.data for f in files]


def test_results_servedBeforeTheAttestationIsMined(network: Network, relay_proc: RelayProcess):
    """A held results request is answered the moment the verified delivery is stored; the
    creator downloads while the attestation still waits for a block."""
    from ape import chain

    c = committed_image_task(network, relay_proc, 1)
    creator = client(relay_proc, network, network.creator)
    held = ThreadPoolExecutor(2)
    waiting = held.submit(creator.get_results, c.task_id, 20.0)
    time.sleep(0.3)
    assert not waiting.done()
    rpc = chain.provider.web3.provider.make_request
    rpc("evm_setAutomine", [False])
    try:
        upload = held.submit(client(relay_proc, network, c.executor).upload_results, c.task_id, c.files, c.score,
                             c.salt)
        manifest = waiting.result(timeout=15)
        assert manifest.attest_tx and not upload.done()  # the attestation is sent, not mined
        assert creator.download_results(c.task_id) == [f.data for f in c.files]
        assert not network.task(c.task_id).delivered
    finally:
        rpc("evm_setAutomine", [True])
        chain.mine(1)
    assert upload.result(timeout=60).attestation.state == "mined"
    assert network.task(c.task_id).delivered
    held.shutdown()


def test_textTask_deliversCanonicalJson(network: Network, relay_proc: RelayProcess):
    args = text_args(network.next_seed())
    client(relay_proc, network, network.creator).put_args(args)
    task_id = network.create_task(args, task_type=TaskType.TEXT)
    executor = network.executor(task_id)
    response = canonical_json({"choices": [{"message": {"role": "assistant", "content": "hi there"}}]})
    score, salt = scores.text_score(response), scores.new_salt()
    network.commit(task_id, executor, score, salt)
    out = client(relay_proc, network, executor).upload_results(
        task_id, [ResultUpload("réponse \"1\".json", response, "text/x-whatever")], score, salt
    )
    assert out.attestation.state == "mined"
    creator = client(relay_proc, network, network.creator)
    assert creator.download_results(task_id) == [response]
    (info,) = creator.get_results(task_id).files
    assert info.content_type == "application/json" and info.name.isascii() and '"' not in info.name


def test_errorScore_deliversNoFiles(network: Network, relay_proc: RelayProcess):
    args = canonical_json({"not": "valid task arguments"})
    client(relay_proc, network, network.creator).put_args(args)
    task_id = network.create_task(args, num_images=1)
    executor = network.executor(task_id)
    salt = scores.new_salt()
    network.commit(task_id, executor, scores.ERROR_SCORE, salt)
    out = client(relay_proc, network, executor).upload_results(task_id, [], scores.ERROR_SCORE, salt)
    assert out.attestation.state == "mined" and out.score == "0x" and out.files == []
    assert network.task(task_id).delivered
    assert client(relay_proc, network, network.creator).get_results(task_id).files == []


def test_auditors_downloadArgsOfAnAuditedTask(network: Network, relay_proc: RelayProcess):
    c = committed_image_task(network, relay_proc, 1, always_audit=True)
    client(relay_proc, network, c.executor).upload_results(c.task_id, c.files, c.score, c.salt)
    task = network.task(c.task_id)
    auditors = [a for a in task.auditors if int(a, 16)]
    assert task.drawn and len(auditors) == 2
    for a in auditors:
        assert client(relay_proc, network, network.ape_account(a)).get_task_args(c.task_id) == c.args
    # the executor may still read them; a node not assigned may not
    assert client(relay_proc, network, c.executor).get_task_args(c.task_id) == c.args
    outsider = next(n for n in network.nodes if n.address not in auditors and n != c.executor)
    with pytest.raises(RelayForbidden):
        client(relay_proc, network, outsider).get_task_args(c.task_id)


def test_publicEndpoints(network: Network, relay_proc: RelayProcess):
    anyone = RelayClient(relay_proc.url)
    health = anyone.health()
    assert health.status == "ok" and health.chain and health.database and health.block_number
    assert health.relay_address.lower() == Account.from_key(network.relay_key).address.lower()
    stats = anyone.stats()
    assert stats.chain is not None and stats.chain["chain_id"] == 31337 and "queue_size" in stats.chain
    assert stats.storage.args_count >= 1
    spec = anyone.openapi()
    assert {"/v1/args/{args_hash}", "/v1/tasks/{task_id}/args", "/v1/tasks/{task_id}/results",
            "/v1/tasks/{task_id}/results/{index}", "/v1/stats", "/health", "/metrics"} <= set(spec["paths"])
    metrics = httpx.get(relay_proc.url + "/metrics").text
    assert "crynux_relay_requests_total" in metrics and "crynux_relay_attestations_total" in metrics


# --- bad requests: status, error code, nothing changed ---------------------------------------


def snapshot(network: Network, relay: RelayProcess, task_ids: list[int]) -> tuple:
    files = sorted(
        (str(p.relative_to(relay.data)), p.stat().st_size)
        for p in (relay.data / "blobs").rglob("*") if p.is_file()
    )
    storage = httpx.get(relay.url + "/v1/stats").json()["storage"]
    chain = [(t.status, t.delivered, t.executor) for t in map(network.task, task_ids)]
    return files, storage, chain


def signed(who: Any, network: Network, method: str, target: str, body: bytes = b"", **kw: Any) -> dict[str, str]:
    return sign_request(network.local(who), method, target, body, **kw).as_dict()


def send(relay: RelayProcess, method: str, target: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(method, relay.url + target, content=body, headers=headers, timeout=60)


def results_body(c: Committed, *, files: list[ResultUpload] | None = None, score: bytes | None = None,
                 salt: bytes | None = None) -> tuple[bytes, str]:
    fields = {"score": "0x" + (c.score if score is None else score).hex(),
              "salt": "0x" + (c.salt if salt is None else salt).hex()}
    return encode_multipart(fields, c.files if files is None else files)


def post_results(relay: RelayProcess, network: Network, c: Committed, who: Any = None, **kw: Any) -> httpx.Response:
    body, ctype = results_body(c, **kw)
    target = f"/v1/tasks/{c.task_id}/results"
    headers = signed(who or c.executor, network, "POST", target, body)
    return send(relay, "POST", target, body, {**headers, "Content-Type": ctype})


def raw_send(relay: RelayProcess, head: str) -> int:
    """Sends only a request head (a body promised but never sent); returns the status code."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        sock.sendall(head.encode())
        reply = sock.recv(4096).decode(errors="replace")
    return int(reply.split(" ", 2)[1])


@pytest.fixture(scope="module")
def pending(network: Network, relay_proc: RelayProcess) -> Committed:
    """One committed task for the whole table (each case must leave it unchanged); a later test
    delivers it. Ten images: T = 230 s, so its deadline (3 T) leaves room on a slow machine."""
    return committed_image_task(network, relay_proc, 10)


def _case_malformed_json(network, relay, c):
    body = b'{"prompt": "unterminated'
    target = "/v1/args/0x" + keccak(body).hex()
    return send(relay, "PUT", target, body, signed(network.creator, network, "PUT", target, body))


def _case_args_not_object(network, relay, c):
    body = b"[1, 2, 3]"
    target = "/v1/args/0x" + keccak(body).hex()
    return send(relay, "PUT", target, body, signed(network.creator, network, "PUT", target, body))


def _case_wrong_args_hash(network, relay, c):
    body = b'{"prompt": "x"}'
    target = "/v1/args/0x" + keccak(b"something else").hex()
    return send(relay, "PUT", target, body, signed(network.creator, network, "PUT", target, body))


def _case_args_oversize(network, relay, c):
    body = canonical_json({"pad": "x" * (256 * 1024)})
    target = "/v1/args/0x" + keccak(body).hex()
    return send(relay, "PUT", target, body, signed(network.creator, network, "PUT", target, body))


def _case_args_oversize_chunked(network, relay, c):
    """No Content-Length: the limit is enforced while streaming."""
    body = canonical_json({"pad": "y" * (300 * 1024)})
    target = "/v1/args/0x" + keccak(body).hex()
    headers = signed(network.creator, network, "PUT", target, body)

    def gen():
        for i in range(0, len(body), 16 * 1024):
            yield body[i:i + 16 * 1024]

    return httpx.request("PUT", relay.url + target, content=gen(), headers=headers, timeout=60)


def _case_expired_timestamp(network, relay, c):
    target = f"/v1/tasks/{c.task_id}/args"
    return send(relay, "GET", target, b"", signed(c.executor, network, "GET", target, timestamp=int(time.time()) - 61))


def _case_future_timestamp(network, relay, c):
    body, ctype = results_body(c)
    target = f"/v1/tasks/{c.task_id}/results"
    headers = signed(c.executor, network, "POST", target, body, timestamp=int(time.time()) + 120)
    return send(relay, "POST", target, body, {**headers, "Content-Type": ctype})


def _case_missing_signature(network, relay, c):
    return send(relay, "GET", f"/v1/tasks/{c.task_id}/args", b"", {})


def _case_bad_signature(network, relay, c):
    """Signed by someone else while claiming to be the executor."""
    target = f"/v1/tasks/{c.task_id}/args"
    headers = signed(network.other_app, network, "GET", target)
    headers["X-Crynux-Address"] = c.executor.address
    return send(relay, "GET", target, b"", headers)


def _case_signature_of_other_body(network, relay, c):
    body, ctype = results_body(c)
    target = f"/v1/tasks/{c.task_id}/results"
    headers = signed(c.executor, network, "POST", target, body + b"x")
    return send(relay, "POST", target, body, {**headers, "Content-Type": ctype})


def _case_replay(network, relay, c):
    target = f"/v1/tasks/{c.task_id}/args"
    headers = signed(c.executor, network, "GET", target)
    first = send(relay, "GET", target, b"", headers)
    assert first.status_code == 200
    return send(relay, "GET", target, b"", headers)


def _case_args_wrong_node(network, relay, c):
    outsider = next(n for n in network.nodes if n != c.executor)
    target = f"/v1/tasks/{c.task_id}/args"
    return send(relay, "GET", target, b"", signed(outsider, network, "GET", target))


def _case_args_creator_not_node(network, relay, c):
    target = f"/v1/tasks/{c.task_id}/args"
    return send(relay, "GET", target, b"", signed(network.creator, network, "GET", target))


def _case_results_wrong_signer(network, relay, c):
    outsider = next(n for n in network.nodes if n != c.executor)
    return post_results(relay, network, c, who=outsider)


def _case_results_download_other_app(network, relay, c):
    target = f"/v1/tasks/{c.task_id}/results"
    return send(relay, "GET", target, b"", signed(network.other_app, network, "GET", target))


def _case_results_download_before_delivery(network, relay, c):
    target = f"/v1/tasks/{c.task_id}/results"
    return send(relay, "GET", target, b"", signed(network.creator, network, "GET", target))


def _case_results_wait_before_delivery(network, relay, c):
    """A held request that sees no delivery within its window still answers 409, not later."""
    target = f"/v1/tasks/{c.task_id}/results?wait=0.5"
    t0 = time.monotonic()
    r = send(relay, "GET", target, b"", signed(network.creator, network, "GET", target))
    assert 0.5 <= time.monotonic() - t0 < 10
    return r


def _case_results_wait_too_long(network, relay, c):
    target = f"/v1/tasks/{c.task_id}/results?wait=31"
    return send(relay, "GET", target, b"", signed(network.creator, network, "GET", target))


def _case_result_file_before_delivery(network, relay, c):
    target = f"/v1/tasks/{c.task_id}/results/0"
    return send(relay, "GET", target, b"", signed(network.creator, network, "GET", target))


def _case_unknown_task_args(network, relay, c):
    target = "/v1/tasks/999999/args"
    return send(relay, "GET", target, b"", signed(c.executor, network, "GET", target))


def _case_unknown_task_results(network, relay, c):
    body, ctype = results_body(c)
    target = "/v1/tasks/999999/results"
    return send(relay, "POST", target, body, {**signed(c.executor, network, "POST", target, body), "Content-Type": ctype})


def _case_not_png(network, relay, c):
    files = [ResultUpload("0.png", b"GIF89a" + b"\x00" * 100), *c.files[1:]]
    return post_results(relay, network, c, files=files)


def _case_truncated_png(network, relay, c):
    files = [ResultUpload("0.png", c.files[0].data[:60]), *c.files[1:]]
    return post_results(relay, network, c, files=files)


def _case_wrong_file_count(network, relay, c):
    return post_results(relay, network, c, files=c.files[:1])


def _case_score_mismatch(network, relay, c):
    """The committed score, but files of another picture."""
    return post_results(relay, network, c, files=[ResultUpload("0.png", png(999_001)), *c.files[1:]])


def _case_claimed_score_not_files(network, relay, c):
    """Refused by the commitment, checked before the files are decoded (no decode for a
    score the executor did not commit)."""
    return post_results(relay, network, c, score=bytes(len(c.score)))


def _case_claimed_score_wrong_length(network, relay, c):
    """A score that cannot be the pHashes of these files: refused without the chain or a decode."""
    return post_results(relay, network, c, score=c.score + b"\x00")


def _case_commitment_mismatch(network, relay, c):
    return post_results(relay, network, c, salt=bytes(32))


def _case_bad_salt(network, relay, c):
    return post_results(relay, network, c, salt=b"\x01" * 31)


def _case_not_multipart(network, relay, c):
    target = f"/v1/tasks/{c.task_id}/results"
    body = json.dumps({"score": "0x" + c.score.hex()}).encode()
    headers = signed(c.executor, network, "POST", target, body)
    return send(relay, "POST", target, body, {**headers, "Content-Type": "application/json"})


def _case_garbage_multipart(network, relay, c):
    target = f"/v1/tasks/{c.task_id}/results"
    body = b"--xyz\r\nContent-Disposition: form-data; name=\"score\"\r\n\r\n0x"  # never terminated
    headers = signed(c.executor, network, "POST", target, body)
    return send(relay, "POST", target, body, {**headers, "Content-Type": "multipart/form-data; boundary=xyz"})


def _case_result_file_oversize(network, relay, c):
    big = noise_png(7, 2600, 2700)  # > 20 MiB, a real PNG
    assert len(big) > 20 * MiB
    return post_results(relay, network, c, files=[ResultUpload("0.png", big), *c.files[1:]])


def _case_task_results_oversize(network, relay, c):
    """A body announced over the 200 MiB task limit is refused before it is read."""
    target = f"/v1/tasks/{c.task_id}/results"
    headers = signed(c.executor, network, "POST", target, b"")
    head = (f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {202 * MiB}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
    return httpx.Response(raw_send(relay, head), json={"error": "too_large"})


BAD_REQUESTS: list[tuple[str, Callable[..., httpx.Response], int, str]] = [
    ("malformed JSON arguments", _case_malformed_json, 400, "malformed_json"),
    ("arguments not an object", _case_args_not_object, 400, "malformed_json"),
    ("wrong arguments hash", _case_wrong_args_hash, 422, "args_hash_mismatch"),
    ("arguments over 256 KiB", _case_args_oversize, 413, "too_large"),
    ("arguments over 256 KiB, chunked", _case_args_oversize_chunked, 413, "too_large"),
    ("expired timestamp", _case_expired_timestamp, 401, "expired_timestamp"),
    ("timestamp in the future", _case_future_timestamp, 401, "expired_timestamp"),
    ("no signature", _case_missing_signature, 401, "missing_signature"),
    ("signature by another key", _case_bad_signature, 401, "bad_signature"),
    ("signature over another body", _case_signature_of_other_body, 401, "bad_signature"),
    ("replayed request", _case_replay, 401, "replayed_request"),
    ("arguments for a node not assigned", _case_args_wrong_node, 403, "forbidden"),
    ("arguments for the creator (not a node)", _case_args_creator_not_node, 403, "forbidden"),
    ("results from a node not the executor", _case_results_wrong_signer, 403, "forbidden"),
    ("results download by another app", _case_results_download_other_app, 403, "forbidden"),
    ("results download before delivery", _case_results_download_before_delivery, 409, "not_delivered"),
    ("results held 0.5 s, no delivery", _case_results_wait_before_delivery, 409, "not_delivered"),
    ("results wait over 30 s", _case_results_wait_too_long, 422, "invalid_request"),
    ("result file before delivery", _case_result_file_before_delivery, 409, "not_delivered"),
    ("arguments of an unknown task", _case_unknown_task_args, 404, "unknown_task"),
    ("results of an unknown task", _case_unknown_task_results, 404, "unknown_task"),
    ("a result that is not a PNG", _case_not_png, 400, "not_png"),
    ("a truncated PNG", _case_truncated_png, 400, "not_png"),
    ("fewer files than images", _case_wrong_file_count, 400, "wrong_file_count"),
    ("files whose score is not the committed one", _case_score_mismatch, 422, "score_mismatch"),
    ("claimed score not the files' score", _case_claimed_score_not_files, 422, "commitment_mismatch"),
    ("claimed score of the wrong length", _case_claimed_score_wrong_length, 422, "score_mismatch"),
    ("commitment mismatch (other salt)", _case_commitment_mismatch, 422, "commitment_mismatch"),
    ("salt not 32 bytes", _case_bad_salt, 400, "bad_field"),
    ("results not multipart", _case_not_multipart, 400, "bad_content_type"),
    ("truncated multipart (fields missing)", _case_garbage_multipart, 400, "bad_field"),
    ("a result file over 20 MiB", _case_result_file_oversize, 413, "too_large"),
    ("a task's results over 200 MiB", _case_task_results_oversize, 413, "too_large"),
]


@pytest.mark.parametrize("name,case,status,code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_badRequest_isRefusedAndChangesNothing(network, relay_proc, pending, name, case, status, code):
    before = snapshot(network, relay_proc, [pending.task_id])
    response = case(network, relay_proc, pending)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert snapshot(network, relay_proc, [pending.task_id]) == before


def test_badRequests_leaveTheTaskDeliverable(network: Network, relay_proc: RelayProcess, pending: Committed):
    """After refused attempts the executor's correct delivery still goes through."""
    assert post_results(relay_proc, network, pending, salt=bytes(32)).status_code == 422
    assert post_results(relay_proc, network, pending).status_code == 201
    again = post_results(relay_proc, network, pending)
    assert again.status_code == 409 and again.json()["error"] == "already_delivered"
    creator = client(relay_proc, network, network.creator)
    assert creator.download_results(pending.task_id) == [f.data for f in pending.files]
    with pytest.raises(RelayNotFound):
        creator.download_result(pending.task_id, len(pending.files))


def test_uploadBeforeCommit_isConflict(network: Network, relay_proc: RelayProcess):
    args = image_args(network.next_seed(), 1)
    client(relay_proc, network, network.creator).put_args(args)
    task_id = network.create_task(args, num_images=1)
    executor = network.executor(task_id)
    files = [ResultUpload("0.png", png(5))]
    score = scores.image_score([files[0].data])
    salt = scores.new_salt()
    with pytest.raises(RelayConflict) as err:
        client(relay_proc, network, executor).upload_results(task_id, files, score, salt)
    assert err.value.code == "not_committed"
    assert not network.task(task_id).delivered
    network.commit(task_id, executor, score, salt)  # the same upload goes through once committed
    assert client(relay_proc, network, executor).upload_results(task_id, files, score, salt).attestation.state == "mined"


def test_argsOfAnotherUploader_areNotServed(network: Network, relay_proc: RelayProcess):
    """Arguments uploaded by someone other than the task's creator do not count for the task."""
    args = image_args(network.next_seed(), 1)
    client(relay_proc, network, network.other_app).put_args(args)
    task_id = network.create_task(args, num_images=1)  # created by network.creator
    executor = network.executor(task_id)
    with pytest.raises(RelayNotFound) as err:
        client(relay_proc, network, executor).get_task_args(task_id)
    assert err.value.code == "args_not_uploaded"
    client(relay_proc, network, network.creator).put_args(args)  # now the creator's own upload
    assert client(relay_proc, network, executor).get_task_args(task_id) == args
    salt = scores.new_salt()
    network.commit(task_id, executor, scores.ERROR_SCORE, salt)
    client(relay_proc, network, executor).upload_results(task_id, [], scores.ERROR_SCORE, salt)


def test_relayWithoutRole_storesThenAttestsOnceGranted(network: Network, accounts, tmp_path):
    """An attestation the market refuses for lack of RELAY_ROLE is kept pending (202), not
    dropped; the worker attests it once governance grants the role."""
    key_holder = accounts.generate_test_account()
    network.owner.transfer(key_holder, 10**18)
    relay = RelayProcess(rpc=network.rpc_url, deployment=network.write_deployment(tmp_path / "d.json"),
                         data=tmp_path / "data", key=key_holder.private_key,
                         extra=["--attest-wait", "2"]).start()
    try:
        c = committed_image_task(network, relay, 1)
        body, ctype = results_body(c)
        target = f"/v1/tasks/{c.task_id}/results"
        r = send(relay, "POST", target, body, {**signed(c.executor, network, "POST", target, body), "Content-Type": ctype})
        assert r.status_code == 202 and r.json()["attestation"]["state"] == "pending", r.text
        assert "RELAY_ROLE" in r.json()["attestation"]["error"]
        assert not network.task(c.task_id).delivered
        with pytest.raises(RelayConflict):
            client(relay, network, network.creator).get_results(c.task_id)  # not delivered yet
        network.market.grantRole(network.market.RELAY_ROLE(), key_holder, sender=network.owner)
        deadline = time.time() + 30
        while time.time() < deadline and not network.task(c.task_id).delivered:
            time.sleep(0.5)
        assert network.task(c.task_id).delivered
        deadline = time.time() + 10
        while True:  # the worker records the attestation right after it is mined
            try:
                assert client(relay, network, network.creator).download_results(c.task_id) == [c.files[0].data]
                break
            except RelayConflict:
                assert time.time() < deadline
                time.sleep(0.2)
    finally:
        relay.stop()


def test_deliveryForAClosedTask_isConflict(network: Network, relay_proc: RelayProcess):
    """A task that has timed out (refunded) takes no delivery: nothing is stored."""
    c = committed_image_task(network, relay_proc, 1)
    task = network.task(c.task_id)
    network.chain_sleep(int(task.deadline) - int(task.startTime) + 5)
    network.market.timeout(c.task_id, sender=network.other_app)
    assert network.task(c.task_id).status == TaskStatus.REFUNDED
    before = snapshot(network, relay_proc, [c.task_id])
    response = post_results(relay_proc, network, c)
    assert response.status_code == 409 and response.json()["error"] == "task_closed"
    assert snapshot(network, relay_proc, [c.task_id]) == before


def test_argsNeverUploaded_goneForGoodAfterTheGrace(network: Network, relay_proc: RelayProcess):
    """Arguments missing 30 s (chain time) after the start: 410 to every node of the task,
    even once the creator uploads them; the executor delivers the error score."""
    args = image_args(network.next_seed(), 1)
    task_id = network.create_task(args, num_images=1)  # never uploaded
    executor = network.executor(task_id)
    node = client(relay_proc, network, executor)
    with pytest.raises(RelayNotFound) as early:
        node.get_task_args(task_id)
    assert early.value.code == "args_not_uploaded"
    network.chain_sleep(31)
    with pytest.raises(RelayGone) as gone:
        node.get_task_args(task_id)
    assert gone.value.code == "args_missing"
    client(relay_proc, network, network.creator).put_args(args)
    with pytest.raises(RelayGone):
        node.get_task_args(task_id)  # for good: auditors get the same answer as the executor
    salt = scores.new_salt()
    network.commit(task_id, executor, scores.ERROR_SCORE, salt)
    out = node.upload_results(task_id, [], scores.ERROR_SCORE, salt)
    assert out.attestation.state == "mined" and network.task(task_id).delivered
