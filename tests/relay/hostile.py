"""Hostile upload content for the relay tests and benchmark: a decompression-bomb PNG, an APNG,
a PNG with bytes after IEND; and the peak memory of a process while something runs."""
from __future__ import annotations

import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MB = 1024 * 1024


def chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, data) chunks of a PNG."""
    assert png.startswith(PNG_SIGNATURE)
    out, pos = [], len(PNG_SIGNATURE)
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        out.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def bomb_png(width: int = 13300, height: int = 13300) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` zero pixels, compressed row by row (13300 x
    13300: 530 MB of pixel data in ~0.5 MB, just under Pillow's decompression-bomb error)."""
    deflate = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then zero pixels
    parts = [deflate.compress(row) for _ in range(height)]
    parts.append(deflate.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def apng(default: bytes, frame: bytes) -> bytes:
    """An animated PNG showing ``frame`` (its one animation frame) in a browser while its
    default image, what a PNG reader decodes, is ``default``; both same-sized PNGs."""
    parsed = chunks(default)
    ihdr = parsed[0][1]
    width, height = struct.unpack(">II", ihdr[:8])
    frame_data = b"".join(d for t, d in chunks(frame) if t == b"IDAT")
    actl = struct.pack(">II", 1, 0)  # one frame, loop forever
    fctl = struct.pack(">IIIIIHHBB", 0, width, height, 0, 0, 1, 1, 0, 0)
    out = PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"acTL", actl)
    out += b"".join(chunk(t, d) for t, d in parsed[1:] if t != b"IEND")  # the default image
    out += chunk(b"fcTL", fctl) + chunk(b"fdAT", struct.pack(">I", 1) + frame_data)
    return out + chunk(b"IEND", b"")


def corrupt_idat(png: bytes) -> bytes:
    """The PNG with its image data replaced by bytes that do not inflate (CRCs still right)."""
    return PNG_SIGNATURE + b"".join(
        chunk(t, b"\xff" * len(d) if t == b"IDAT" else d) for t, d in chunks(png)
    )


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@dataclass
class PeakMemory:
    """The peak resident memory of process ``pid`` while the block runs, above its resident
    memory when it started: the kernel's high-water mark (VmHWM) reset through clear_refs,
    or, where that is not allowed, sampled every 5 ms."""

    pid: int
    extra_mb: float = 0.0
    _rss0_kb: int = 0
    _sampled_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS
        except OSError:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._rss0_kb = _status_kb(self.pid, "VmRSS")
        self._sampled_kb = self._rss0_kb
        if self._sampler is not None:
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled_kb = max(self._sampled_kb, _status_kb(self.pid, "VmRSS"))
            time.sleep(0.005)

    def __exit__(self, *_exc: object) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            peak = self._sampled_kb
        else:
            peak = _status_kb(self.pid, "VmHWM")
        self.extra_mb = max(0, peak - self._rss0_kb) / 1024
