"""Result scores and commitments, computed exactly as the contracts compare them.

Public API:
    ERROR_SCORE                                 b"" (invalid arguments)
    PHASH_BYTES                                 8
    phash_bytes(image, max_pixels=None) -> bytes 8-byte big-endian 64-bit DCT pHash of one image
    image_score(images) -> bytes                concatenated pHashes (PIL images or PNG bytes)
    text_score(response) -> bytes               SHA-256 of canonical JSON (dict) or of given bytes
    score_for(task_type, files) -> bytes        recompute a score from delivered result files
    hamming(a, b) -> int
    scores_match(a, b, task_type, hamming_threshold=5) -> bool
    commitment(task_id, node, score, salt) -> bytes (32)
    new_salt() -> bytes (32)
"""
from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import imagehash
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_canonical_address
from PIL import Image

from crynux_common.schemas import TaskType, canonical_json

ERROR_SCORE = b""
PHASH_BYTES = 8
TEXT_SCORE_BYTES = 32
DEFAULT_HAMMING_THRESHOLD = 5


class ScoreError(ValueError):
    """Result files from which no score can be computed (not an image, empty ...)."""


def _as_image(image: Image.Image | bytes, max_pixels: int | None = None) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    try:
        img = Image.open(io.BytesIO(image))
    except Exception as e:  # PIL raises a zoo of exception types for bad input
        raise ScoreError(f"not a readable image: {e}") from e
    width, height = img.size  # from the header: nothing is decoded yet
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ScoreError(f"the image has {width} x {height} pixels; at most {max_pixels} are decoded")
    try:
        img.load()
    except Exception as e:
        img.close()
        raise ScoreError(f"not a readable image: {e}") from e
    return img


def phash_bytes(image: Image.Image | bytes, max_pixels: int | None = None) -> bytes:
    """The 64-bit DCT perceptual hash (imagehash.phash, hash_size 8) as 8 big-endian bytes.
    With ``max_pixels``, an image whose header declares more pixels is refused (ScoreError)
    before it is decoded."""
    h = imagehash.phash(_as_image(image, max_pixels), hash_size=8)
    # str(h) is the hex of the flattened bit matrix, first bit most significant.
    return bytes.fromhex(str(h))


def image_score(images: Iterable[Image.Image | bytes]) -> bytes:
    """Concatenated pHashes of the images, in order."""
    out = b"".join(phash_bytes(img) for img in images)
    if not out:
        raise ScoreError("an image result needs at least one image")
    return out


def text_score(response: Any) -> bytes:
    """SHA-256 of the canonical response JSON.

    `response` is either the response object (dict) or its canonical JSON bytes as
    delivered (bytes are hashed as they are: the relay hashes exactly the uploaded file).
    """
    data = response if isinstance(response, (bytes, bytearray)) else canonical_json(response)
    return hashlib.sha256(data).digest()


def score_for(task_type: TaskType | int, files: Sequence[bytes]) -> bytes:
    """The score of delivered result files: image files in order, or one text JSON file."""
    tt = TaskType(int(task_type))
    if tt is TaskType.IMAGE:
        return image_score(files)
    if len(files) != 1:
        raise ScoreError(f"a text result is one JSON file, got {len(files)}")
    return text_score(files[0])


def hamming(a: bytes, b: bytes) -> int:
    """Bit differences between two equal-length byte strings."""
    if len(a) != len(b):
        raise ValueError(f"lengths differ: {len(a)} != {len(b)}")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count() if a else 0


def scores_match(
    a: bytes,
    b: bytes,
    task_type: TaskType | int,
    hamming_threshold: int = DEFAULT_HAMMING_THRESHOLD,
) -> bool:
    """Whether two scores agree, as the contract decides.

    Error scores (empty) match only error scores. Text scores match when equal. Image
    scores match when they have the same length, a whole number of 8-byte pHashes, and
    each pair of pHashes differs by at most `hamming_threshold` bits.
    """
    a, b = bytes(a), bytes(b)
    if len(a) != len(b):
        return False
    if not a:
        return True  # both are the error score
    if TaskType(int(task_type)) is TaskType.TEXT:
        return a == b
    if len(a) % PHASH_BYTES:
        return a == b  # malformed image score: only an identical one agrees
    for i in range(0, len(a), PHASH_BYTES):
        if hamming(a[i : i + PHASH_BYTES], b[i : i + PHASH_BYTES]) > hamming_threshold:
            return False
    return True


def commitment(task_id: int, node: str | bytes, score: bytes, salt: bytes) -> bytes:
    """keccak256(abi.encode(uint256 taskId, address node, bytes score, bytes32 salt))."""
    if len(salt) != 32:
        raise ValueError(f"salt must be 32 bytes, got {len(salt)}")
    addr = to_canonical_address(node)
    encoded = abi_encode(
        ["uint256", "address", "bytes", "bytes32"], [task_id, addr, bytes(score), bytes(salt)]
    )
    return keccak(encoded)


def new_salt() -> bytes:
    """32 random bytes from the OS CSPRNG."""
    return secrets.token_bytes(32)
