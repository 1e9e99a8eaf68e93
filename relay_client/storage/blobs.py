"""Blob stores for argument and result bytes: local files (default) or an S3-compatible bucket.

A blob becomes visible under its key only once it is complete: the local store writes a
temporary file, fsyncs it, renames it into place and fsyncs the directory; an S3 PUT is
atomic by itself. Keys are relative paths of ``[A-Za-z0-9._-]`` segments joined by ``/``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")
_TMP_SUFFIX = ".part"
CHUNK = 1 << 20


class BlobError(Exception):
    """A blob store operation failed."""


class BlobNotFound(BlobError):
    """No blob under that key."""


class BlobUnavailable(BlobError, OSError):
    """The store cannot be read or written (folder gone or read-only, disk full, bucket
    unreachable): transient for the relay, which answers 503 until it is repaired. An OSError
    too, for callers that handled the local store's errors as such."""


@contextlib.contextmanager
def _io(op: str, key: str) -> Iterator[None]:
    """Turns an OS error of a local blob operation into BlobUnavailable (FileNotFoundError of
    a read stays BlobNotFound at the call site)."""
    try:
        yield
    except BlobError:
        raise
    except OSError as exc:
        raise BlobUnavailable(f"cannot {op} blob {key}: {exc.strerror or exc}") from exc


def check_key(key: str) -> str:
    if not _KEY_RE.match(key) or key.endswith(_TMP_SUFFIX) or len(key) > 200:
        raise ValueError(f"invalid blob key: {key!r}")
    return key


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified: float  # unix seconds


class BlobStore(Protocol):
    """What the relay needs from a byte store."""

    def put_file(self, key: str, src: BinaryIO) -> int:
        """Copies ``src`` (from its current position) under ``key`` atomically; returns the size."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Removes the blob; no error when it is absent."""
        ...

    def list(self, prefix: str = "") -> Iterator[BlobInfo]: ...

    def remove_incomplete(self) -> int:
        """Deletes leftovers of interrupted writes; returns how many. Call before serving."""
        ...

    def describe(self) -> str: ...


class LocalBlobStore:
    """Blobs as files under ``root``."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync

    def describe(self) -> str:
        return f"local files in {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fsync_dir(self, path: Path) -> None:
        if not self._fsync:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write(self, key: str, write: "callable[[BinaryIO], int]") -> int:  # type: ignore[valid-type]
        final = self._path(key)
        with _io("write", key):
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
            try:
                with open(tmp, "wb") as out:
                    size = write(out)
                    out.flush()
                    if self._fsync:
                        os.fsync(out.fileno())
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                raise
            self._fsync_dir(final.parent)
        return size

    def put_file(self, key: str, src: BinaryIO) -> int:
        def copy(out: BinaryIO) -> int:
            total = 0
            while chunk := src.read(CHUNK):
                out.write(chunk)
                total += len(chunk)
            return total

        return self._write(key, copy)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda out: out.write(data))

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with _io("read", key):
            try:
                return path.read_bytes()
            except FileNotFoundError as exc:
                raise BlobNotFound(key) from exc

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        with _io("read", key):
            try:
                f = open(path, "rb")
            except FileNotFoundError as exc:
                raise BlobNotFound(key) from exc

        def gen() -> Iterator[bytes]:
            with f:
                while chunk := f.read(chunk_size):
                    yield chunk

        return gen()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _io("delete", key):
            path.unlink(missing_ok=True)
        # Drop now-empty directories up to the root (keeps listings cheap).
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        base = self.root
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(_TMP_SUFFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(base).as_posix()
                if key.startswith(prefix):
                    st = full.stat()
                    yield BlobInfo(key=key, size=st.st_size, modified=st.st_mtime)

    def remove_incomplete(self) -> int:
        removed = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(_TMP_SUFFIX):
                    (Path(dirpath) / name).unlink(missing_ok=True)
                    removed += 1
        return removed


class S3BlobStore:
    """Blobs as objects of an S3-compatible bucket (AWS, MinIO, Ceph, ...), under ``prefix``."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        create_bucket: bool = False,
    ) -> None:
        import boto3  # imported lazily: only S3 deployments need it
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
        )
        self._endpoint = endpoint_url or "AWS"
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
        if create_bucket:
            try:
                self._client.head_bucket(Bucket=bucket)
            except Exception:
                self._client.create_bucket(Bucket=bucket)

    def describe(self) -> str:
        return f"S3 bucket {self.bucket!r} at {self._endpoint} (prefix {self.prefix!r})"

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextlib.contextmanager
    def _io(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except BlobError:
            raise
        except self._errors as exc:
            raise BlobUnavailable(f"cannot {op} blob {key} in bucket {self.bucket!r}: {exc}") from exc

    def put_file(self, key: str, src: BinaryIO) -> int:
        start = src.tell()
        src.seek(0, os.SEEK_END)
        size = src.tell() - start
        src.seek(start)
        # put_object (not a multipart upload) is all-or-nothing; results are <= 20 MiB each.
        with self._io("write", key):
            self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=src.read(), ContentLength=size)
        return size

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._io("write", key):
            self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)

    def _get(self, key: str):  # type: ignore[no-untyped-def]
        with self._io("read", key):
            try:
                return self._client.get_object(Bucket=self.bucket, Key=self._k(key))
            except self._client.exceptions.NoSuchKey as exc:
                raise BlobNotFound(key) from exc

    def get_bytes(self, key: str) -> bytes:
        return self._get(key)["Body"].read()

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        body = self._get(key)["Body"]
        return iter(body.iter_chunks(chunk_size))

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except Exception:
            return False

    def delete(self, key: str) -> None:
        with self._io("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                yield BlobInfo(
                    key=obj["Key"][len(self.prefix):],
                    size=int(obj["Size"]),
                    modified=obj["LastModified"].timestamp(),
                )

    def remove_incomplete(self) -> int:
        # A PUT is atomic; abort multipart uploads someone else may have left behind.
        removed = 0
        resp = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        for up in resp.get("Uploads", []):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
            removed += 1
        return removed


def older_than(info: BlobInfo, seconds: float, now: float | None = None) -> bool:
    return ((time.time() if now is None else now) - info.modified) >= seconds
