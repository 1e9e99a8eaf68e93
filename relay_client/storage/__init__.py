"""Relay persistence: SQL rows (SQLite by default, PostgreSQL by URL) and blobs (files or S3)."""
from .blobs import BlobError, BlobNotFound, BlobStore, BlobUnavailable, LocalBlobStore, S3BlobStore
from .repository import (
    AlreadyDelivered,
    ArgsRecord,
    Delivery,
    Repository,
    ResultFile,
    StorageError,
    StorageStats,
    StorageUnavailable,
    make_engine,
)
from .store import IncomingFile, RecoveryReport, Store

__all__ = [
    "AlreadyDelivered", "ArgsRecord", "BlobError", "BlobNotFound", "BlobStore", "Delivery",
    "IncomingFile", "LocalBlobStore", "RecoveryReport", "Repository", "ResultFile", "S3BlobStore",
    "StorageError", "StorageStats", "StorageUnavailable", "Store", "make_engine", "BlobUnavailable",
]
