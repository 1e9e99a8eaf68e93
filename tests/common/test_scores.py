"""Scores and commitments: the values the contracts compare and the relay recomputes."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from crynux_common.schemas import TaskType, canonical_json
from crynux_common.scores import (
    ERROR_SCORE,
    ScoreError,
    commitment,
    hamming,
    image_score,
    new_salt,
    phash_bytes,
    score_for,
    scores_match,
    text_score,
)

NODE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def noise_image(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def flip_bits(score: bytes, positions: list[int]) -> bytes:
    v = int.from_bytes(score, "big")
    for p in positions:
        v ^= 1 << p
    return v.to_bytes(len(score), "big")


def test_phash_isEightBytesBigEndianOfImagehash():
    import imagehash

    img = noise_image(1)
    h = imagehash.phash(img)
    bits = h.hash.flatten()
    expected = sum(int(b) << (63 - i) for i, b in enumerate(bits)).to_bytes(8, "big")
    assert phash_bytes(img) == expected
    assert len(expected) == 8


def test_imageScore_sameFromPilAndPngBytes():
    imgs = [noise_image(1), noise_image(2)]
    score = image_score(imgs)
    assert len(score) == 16
    assert score == image_score([png(i) for i in imgs])
    assert score[:8] == phash_bytes(imgs[0]) and score[8:] == phash_bytes(imgs[1])


def test_imageScore_failsIfNoImageOrNotAnImage():
    with pytest.raises(ScoreError):
        image_score([])
    with pytest.raises(ScoreError, match="not a readable image"):
        image_score([b"not a png"])


def test_textScore_isSha256OfCanonicalJson():
    resp = {"model": "m", "choices": [{"index": 0, "message": {"content": "héllo"}}]}
    expected = hashlib.sha256(canonical_json(resp)).digest()
    assert text_score(resp) == expected
    assert text_score(canonical_json(resp)) == expected
    assert len(expected) == 32


def test_scoreFor_recomputesFromFiles():
    imgs = [png(noise_image(3)), png(noise_image(4))]
    assert score_for(TaskType.IMAGE, imgs) == image_score(imgs)
    body = canonical_json({"a": 1})
    assert score_for(TaskType.TEXT, [body]) == text_score(body)
    with pytest.raises(ScoreError):
        score_for(TaskType.TEXT, [body, body])


def test_scoresMatch_imageWithinThreshold():
    s = image_score([noise_image(1), noise_image(2)])
    # 5 bits off in each image: still a match; 6 bits in one image: not.
    five_each = flip_bits(s, [0, 1, 2, 3, 4, 64, 65, 66, 67, 68])
    assert scores_match(s, five_each, TaskType.IMAGE)
    six_in_one = flip_bits(s, [0, 1, 2, 3, 4, 5])
    assert not scores_match(s, six_in_one, TaskType.IMAGE)
    assert scores_match(s, six_in_one, TaskType.IMAGE, hamming_threshold=6)
    assert not scores_match(s, five_each, TaskType.IMAGE, hamming_threshold=0)


def test_scoresMatch_perImageNotSummed():
    s = image_score([noise_image(1), noise_image(2)])
    # 8 bits off in total but only 4 in each 8-byte hash: a match.
    assert scores_match(s, flip_bits(s, [0, 1, 2, 3, 64, 65, 66, 67]), TaskType.IMAGE)


def test_scoresMatch_differentImagesDoNotMatch():
    a, b = image_score([noise_image(1)]), image_score([noise_image(2)])
    assert hamming(a, b) > 5
    assert not scores_match(a, b, TaskType.IMAGE)


def test_scoresMatch_lengthsMustBeEqual():
    s = image_score([noise_image(1), noise_image(2)])
    assert not scores_match(s, s[:8], TaskType.IMAGE)
    assert not scores_match(s, ERROR_SCORE, TaskType.IMAGE)
    assert not scores_match(ERROR_SCORE, s, TaskType.IMAGE)


def test_scoresMatch_errorMatchesOnlyError():
    for tt in TaskType:
        assert scores_match(ERROR_SCORE, ERROR_SCORE, tt)
        assert not scores_match(ERROR_SCORE, b"\x00" * 32, tt)


def test_scoresMatch_textNeedsEquality():
    t = text_score({"x": 1})
    assert scores_match(t, t, TaskType.TEXT)
    assert not scores_match(t, flip_bits(t, [0]), TaskType.TEXT)


@given(
    score=st.binary(min_size=8, max_size=80).filter(lambda b: len(b) % 8 == 0),
    bits=st.sets(st.integers(0, 63), max_size=12),
    threshold=st.integers(0, 64),
)
def test_scoresMatch_oneImageFlipsMatchIffWithinThreshold(score, bits, threshold):
    other = flip_bits(score, sorted(bits))
    assert scores_match(score, other, TaskType.IMAGE, threshold) == (len(bits) <= threshold)
    assert scores_match(other, score, TaskType.IMAGE, threshold) == scores_match(
        score, other, TaskType.IMAGE, threshold
    )


def abi_encode_by_hand(task_id: int, node: str, score: bytes, salt: bytes) -> bytes:
    """abi.encode(uint256, address, bytes, bytes32) laid out word by word."""
    words = [
        task_id.to_bytes(32, "big"),
        bytes(12) + bytes.fromhex(node[2:]),
        (4 * 32).to_bytes(32, "big"),  # offset of the dynamic `bytes` part
        salt,
        len(score).to_bytes(32, "big"),
        score + bytes(-len(score) % 32),
    ]
    return b"".join(words)


@pytest.mark.parametrize("score", [ERROR_SCORE, b"\x01" * 8, b"\xab" * 32, bytes(range(40))])
def test_commitment_isKeccakOfAbiEncode(score):
    salt = bytes(range(32))
    expected = keccak(abi_encode_by_hand(12345, NODE, score, salt))
    assert commitment(12345, NODE, score, salt) == expected
    assert commitment(12345, NODE.lower(), score, salt) == expected


def test_commitment_bindsEveryField():
    salt, score = new_salt(), b"\x01" * 8
    c = commitment(1, NODE, score, salt)
    assert c != commitment(2, NODE, score, salt)
    assert c != commitment(1, "0x" + "11" * 20, score, salt)
    assert c != commitment(1, NODE, b"\x02" * 8, salt)
    assert c != commitment(1, NODE, score, new_salt())


def test_commitment_failsIfSaltNot32Bytes():
    with pytest.raises(ValueError, match="32 bytes"):
        commitment(1, NODE, b"", b"short")


def test_newSalt_is32RandomBytes():
    salts = {new_salt() for _ in range(10)}
    assert len(salts) == 10 and all(len(s) == 32 for s in salts)


def test_phashBytes_refusesMorePixelsThanTheBoundBeforeDecoding():
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")
    with pytest.raises(ScoreError, match="3000 x 3000"):
        phash_bytes(buf.getvalue(), max_pixels=2048 * 2048)
    assert len(phash_bytes(buf.getvalue(), max_pixels=3000 * 3000)) == 8
