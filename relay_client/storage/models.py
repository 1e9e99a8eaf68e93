"""SQLAlchemy tables of the relay: arguments, deliveries, result files, seen requests."""
from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ArgsRow(Base):
    """Task arguments uploaded by ``uploader`` under their keccak256 ``args_hash``.

    Keyed by (hash, uploader): two applications may upload identical arguments, and a task
    only ever gets the arguments its own creator uploaded.
    """

    __tablename__ = "args"
    args_hash: Mapped[str] = mapped_column(String(66), primary_key=True)  # 0x + 64 hex, lower case
    uploader: Mapped[str] = mapped_column(String(42), primary_key=True)  # lower-case address
    blob_key: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float(precision=53))


class DeliveryRow(Base):
    """The results of a task as the executor delivered them, and the on-chain attestation."""

    __tablename__ = "deliveries"
    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    node: Mapped[str] = mapped_column(String(42))
    upload_id: Mapped[str] = mapped_column(String(32))
    task_type: Mapped[int] = mapped_column(Integer)
    score: Mapped[str] = mapped_column(Text)  # 0x-hex, may be "0x" (error score)
    salt: Mapped[str] = mapped_column(String(66))
    num_files: Mapped[int] = mapped_column(Integer)
    total_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float(precision=53))
    attested: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    attest_failed: Mapped[bool] = mapped_column(Boolean, default=False)
    attest_tx: Mapped[str | None] = mapped_column(String(66), nullable=True)
    attest_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attested_at: Mapped[float | None] = mapped_column(Float(precision=53), nullable=True)


class MissingArgsRow(Base):
    """A started task whose creator had not uploaded its arguments when its grace period
    ended: the relay answers 410 for its arguments from then on, to every node alike."""

    __tablename__ = "missing_args"
    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    marked_at: Mapped[float] = mapped_column(Float(precision=53))


class ResultFileRow(Base):
    """One file of a delivery, in order."""

    __tablename__ = "result_files"
    task_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("deliveries.task_id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    blob_key: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class SeenRequestRow(Base):
    """A signed request already accepted; a second one with the same key is a replay."""

    __tablename__ = "seen_requests"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float(precision=53), index=True)


class TaskArgsRow(Base):
    """What `crynux-relay prune` learnt from the chain about a task the relay has seen (a
    delivery or a missing-arguments mark): whose arguments it uses and whether it is final.
    Arguments are pruned only when every task known to use them is final."""

    __tablename__ = "task_args"
    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    args_hash: Mapped[str] = mapped_column(String(66), index=True)
    creator: Mapped[str] = mapped_column(String(42))  # lower-case address
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    checked_at: Mapped[float] = mapped_column(Float(precision=53))
