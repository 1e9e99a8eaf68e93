"""A PNG's structure read from its chunk headers, without decoding a pixel.

The relay runs this on every delivered image before anything is decompressed: the IHDR
dimensions bound what a later decode costs (a 0.5 MB file can declare 13300 x 13300 pixels),
and a single still image is all a result may be (no APNG frames a browser would show instead
of the scored image, no bytes after IEND, metadata small once inflated).

Public API:
    PngInfo                                     width, height, bit depth, colour type, interlace
    PngRejected                                 ``code`` (an API error code) and a message
    inspect_png(fp, *, max_metadata_bytes) -> PngInfo
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Chunks of animated PNG (APNG): a PNG reader shows the default image, a browser the frames.
APNG_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})
#: Ancillary chunks whose payload Pillow inflates (zTXt, iCCP always; iTXt when flagged).
COMPRESSED_CHUNKS = frozenset({b"zTXt", b"iCCP", b"iTXt"})
#: Metadata (every chunk but IHDR, PLTE, IDAT, IEND), stored and inflated, per image.
MAX_METADATA_BYTES = 1024 * 1024
_READ = 1 << 20


class PngRejected(ValueError):
    """Not a single, well-formed still PNG."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _read_exact(fp: BinaryIO, n: int, what: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise PngRejected("not_png", f"the PNG ends inside {what}")
    return data


def _inflated_size(ctype: bytes, data: bytes, budget: int) -> int:
    """How many bytes the chunk's compressed payload inflates to, counted up to ``budget + 1``."""
    keyword_end = data.find(b"\x00")
    if keyword_end < 0:
        raise PngRejected("not_png", f"the {ctype.decode()} chunk has no keyword terminator")
    rest = data[keyword_end + 1:]
    if ctype == b"iTXt":
        if len(rest) < 2 or rest[0] == 0:  # uncompressed text: counted as stored
            return 0
        rest = rest[2:]
        for _ in range(2):  # language tag, translated keyword
            end = rest.find(b"\x00")
            if end < 0:
                raise PngRejected("not_png", "the iTXt chunk is truncated")
            rest = rest[end + 1:]
    else:
        rest = rest[1:]  # compression method
    inflater = zlib.decompressobj()
    try:
        out = len(inflater.decompress(rest, budget + 1))
    except zlib.error as exc:
        raise PngRejected("not_png", f"the {ctype.decode()} chunk does not inflate: {exc}") from None
    return out


def inspect_png(fp: BinaryIO, *, max_metadata_bytes: int = MAX_METADATA_BYTES) -> PngInfo:
    """Walks the chunks of the PNG in ``fp`` (from its start; left at an unspecified
    position): signature, IHDR first, CRCs, at least one IDAT, IEND last with nothing after
    it, no APNG chunk, metadata within ``max_metadata_bytes``. Reads image data only to check
    CRCs; never inflates it. Raises PngRejected."""
    fp.seek(0)
    if fp.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        raise PngRejected("not_png", "no PNG signature")
    info: PngInfo | None = None
    metadata = 0
    seen_idat = False
    while True:
        length, ctype = struct.unpack(">I4s", _read_exact(fp, 8, "a chunk header"))
        if length > 0x7FFFFFFF or not ctype.isalpha() or not ctype.isascii():
            raise PngRejected("not_png", f"bad chunk header (type {ctype!r}, length {length})")
        if ctype in APNG_CHUNKS:
            raise PngRejected("animated_png", f"an animated PNG ({ctype.decode()} chunk): a result is one still image")
        if info is None and ctype != b"IHDR":
            raise PngRejected("not_png", f"the first chunk is {ctype.decode()}, not IHDR")
        crc = zlib.crc32(ctype)
        critical_or_data = ctype in (b"IHDR", b"PLTE", b"IDAT", b"IEND")
        if not critical_or_data:
            metadata += length
            if metadata > max_metadata_bytes:
                raise PngRejected("png_metadata_too_large",
                                  f"metadata chunks exceed {max_metadata_bytes} bytes")
        if ctype == b"IDAT" or length > _READ:
            left, data = length, b""
            while left:
                piece = _read_exact(fp, min(left, _READ), f"the {ctype.decode()} chunk")
                crc = zlib.crc32(piece, crc)
                left -= len(piece)
        else:
            data = _read_exact(fp, length, f"the {ctype.decode()} chunk")
            crc = zlib.crc32(data, crc)
        (stored_crc,) = struct.unpack(">I", _read_exact(fp, 4, "a chunk CRC"))
        if crc != stored_crc:
            raise PngRejected("not_png", f"the {ctype.decode()} chunk's CRC is wrong")
        if ctype == b"IHDR":
            if info is not None or length != 13:
                raise PngRejected("not_png", "a second or malformed IHDR chunk")
            width, height, depth, color, _comp, _filter, interlace = struct.unpack(">IIBBBBB", data)
            if not width or not height:
                raise PngRejected("not_png", f"the image is {width} x {height} pixels")
            info = PngInfo(width, height, depth, color, bool(interlace))
        elif ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"IEND":
            break
        elif ctype in COMPRESSED_CHUNKS:
            metadata += _inflated_size(ctype, data, max_metadata_bytes - metadata)
            if metadata > max_metadata_bytes:
                raise PngRejected("png_metadata_too_large",
                                  f"metadata chunks inflate to more than {max_metadata_bytes} bytes")
    if not seen_idat or info is None:
        raise PngRejected("not_png", "the PNG has no image data (IDAT)")
    if fp.read(1):
        raise PngRejected("data_after_iend", "the PNG has bytes after its IEND chunk")
    return info
