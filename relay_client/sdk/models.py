"""What the SDK returns: estimates, progress updates, results and a per-task report."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from PIL import Image

from crynux_common.enums import TaskStatus, TaskType

from ..server.schemas import ResultManifest
from .chain import TxRecord


class Phase(str, Enum):
    """Steps of a task as the application sees them (in order)."""

    CREATED = "created"
    QUEUED = "queued"
    STARTED = "started"
    COMMITTED = "committed"
    DELIVERED = "delivered"
    SETTLED = "settled"


PHASE_ORDER = list(Phase)


@dataclass(frozen=True)
class TaskEstimate:
    """What a fee buys now: the task value and its place in the queue."""

    fee: int
    escrow: int  # fee, or 3 x fee with always_audit
    estimated_time: int  # T in seconds
    value: int  # V = fee / T in CNX wei per second
    queue_position: int  # queued tasks served before this one
    queue_size: int


@dataclass(frozen=True)
class Progress:
    """One progress update, given to the `on_progress` callback."""

    task_id: int
    phase: Phase
    status: TaskStatus
    elapsed: float  # seconds since the wait began
    executor: str | None = None


@dataclass
class ImageResult:
    task_id: int
    images: list[Image.Image]
    files: list[bytes]
    score: bytes

    def save(self, folder: Any, stem: str | None = None) -> list[str]:
        """Writes the PNG files as delivered; returns their paths."""
        from pathlib import Path

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, data in enumerate(self.files):
            p = out / f"{stem or f'task-{self.task_id}'}-{i}.png"
            p.write_bytes(data)
            paths.append(str(p))
        return paths


@dataclass
class TextResult:
    task_id: int
    response: dict[str, Any]
    raw: bytes
    score: bytes

    @property
    def text(self) -> str:
        """The generated message when the response has the usual chat shape, else the JSON."""
        r = self.response
        try:
            choice = r["choices"][0]
            return str(choice["message"]["content"])
        except (KeyError, IndexError, TypeError):
            return json.dumps(r, ensure_ascii=False)


@dataclass
class TaskReport:
    """Everything the SDK saw of one task: ids, transactions, phase times, the result."""

    task_id: int
    task_type: TaskType
    args_hash: str
    fee: int
    txs: list[TxRecord] = field(default_factory=list)
    phase_times: dict[str, float] = field(default_factory=dict)  # phase -> seconds since creation receipt
    timings: dict[str, float] = field(default_factory=dict)  # named durations (upload_args_s, download_s ...)
    executor: str | None = None
    result: ImageResult | TextResult | None = None
    final_status: TaskStatus | None = None
    #: The relay's manifest of the delivered files, once `wait` saw them (kept for the download).
    manifest: ResultManifest | None = None
