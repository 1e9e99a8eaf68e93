"""The inference engine: raw task arguments in, result files and score out.

    engine = InferenceEngine(ModelRegistry(...), EngineSettings(...))
    result = engine.run(TaskType.IMAGE, args_bytes, task_model_ids=[...], num_images=2)
    result.files  # [("0.png", b"..."), ...] or [("result.json", b"...")]
    result.score  # bytes to commit; ERROR_SCORE (b"") when the arguments are invalid
    result.error  # why the arguments are invalid, else None

Invalid arguments never raise: every honest node reaches the same verdict, so the error
score is a result like any other. A failure of this node (out of memory, a model it cannot
fetch, a crash in torch) raises InferenceFailure: the caller must not commit for it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, Field

from crynux_common.schemas import (
    ArgsError,
    ImageTaskArgs,
    TaskType,
    TextTaskArgs,
    canonical_json,
    parse_task_args,
)
from crynux_common.scores import ERROR_SCORE, image_score, text_score

from .cache import ModelCache, release_memory
from .device import TorchSettings, configure_torch, dtype_for
from .errors import InferenceFailure, ModelUnavailable, OutOfMemory, is_oom
from .image import ImageModel, generate_images, load_image_model, png_bytes
from .text import TextModel, generate_text, load_text_model

if TYPE_CHECKING:
    from node_client.models import ModelRegistry

log = logging.getLogger(__name__)

TEXT_RESULT_NAME = "result.json"


class EngineSettings(BaseModel):
    torch: TorchSettings = Field(default_factory=TorchSettings)
    #: Bytes of model weights kept loaded; None: 90% of the GPU memory, or 40% of the RAM.
    memory_budget_bytes: int | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class InferenceResult:
    files: list[tuple[str, bytes]]
    score: bytes
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def is_error(self) -> bool:
        return self.error is not None

    @classmethod
    def invalid(cls, reason: str, timings: dict[str, float] | None = None) -> InferenceResult:
        return cls(files=[], score=ERROR_SCORE, error=reason, timings=timings or {})


def default_memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * 2**30
    return int(ram * 0.4)


def _weights_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


class InferenceEngine:
    """Runs image and text tasks; keeps loaded models warm in an LRU bounded by memory."""

    def __init__(self, registry: ModelRegistry, settings: EngineSettings | None = None):
        self.registry = registry
        self.settings = settings or EngineSettings()
        self.device = configure_torch(self.settings.torch)
        self.dtype = dtype_for(self.device)
        budget = self.settings.memory_budget_bytes or default_memory_budget(self.device)
        self.cache: ModelCache[ImageModel | TextModel] = ModelCache(budget)
        # Pipelines are not re-entrant: one task at a time per engine.
        self._run_lock = threading.Lock()

    # --- public ---------------------------------------------------------------------

    def run(
        self,
        task_type: TaskType | int,
        args_bytes: bytes,
        *,
        task_model_ids: Sequence[str] | None = None,
        num_images: int | None = None,
    ) -> InferenceResult:
        """Execute one task.

        `task_model_ids` / `num_images`: what the task declares on-chain; arguments that
        disagree with them are invalid (error score). Raises InferenceFailure only.
        """
        with self._run_lock:
            return self._run(task_type, args_bytes, task_model_ids, num_images)

    def _run(
        self,
        task_type: TaskType | int,
        args_bytes: bytes,
        task_model_ids: Sequence[str] | None,
        num_images: int | None,
    ) -> InferenceResult:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            args = parse_task_args(args_bytes, task_type)
            self._check_declared(args, task_model_ids, num_images)
            folders = {mid: self.registry.resolve(mid) for mid in args.model_ids()}
            timings["prepare_s"] = time.perf_counter() - t0
            if isinstance(args, ImageTaskArgs):
                result = self._run_image(args, folders, timings)
            else:
                result = self._run_text(args, folders, timings)
        except ArgsError as e:
            timings["total_s"] = time.perf_counter() - t0
            log.warning("invalid task arguments, committing the error score: %s", e)
            return InferenceResult.invalid(str(e), timings)
        except InferenceFailure:
            raise
        except Exception as e:
            if is_oom(e):
                log.error("out of memory, unloading every model: %s", e)
                self.cache.clear()
                raise OutOfMemory(str(e)) from e
            log.exception("inference failed")
            raise InferenceFailure(f"{type(e).__name__}: {e}") from e
        timings["total_s"] = time.perf_counter() - t0
        return InferenceResult(files=result[0], score=result[1], timings=timings)

    def warm(self, model_id: str, task_type: TaskType | int) -> None:
        """Load a model ahead of tasks (e.g. at start-up)."""
        folder = self.registry.resolve(model_id)
        if TaskType(int(task_type)) is TaskType.IMAGE:
            self._image_model(model_id, folder)
        else:
            self._text_model(model_id, folder)

    def loaded_models(self) -> list[str]:
        return self.cache.keys()

    def load_count(self, model_id: str) -> int:
        return self.cache.stats.loads.get(model_id, 0)

    def unload_all(self) -> None:
        self.cache.clear()

    # --- internals ------------------------------------------------------------------

    @staticmethod
    def _check_declared(
        args: ImageTaskArgs | TextTaskArgs,
        task_model_ids: Sequence[str] | None,
        num_images: int | None,
    ) -> None:
        if task_model_ids is not None and list(task_model_ids) != args.model_ids():
            raise ArgsError(
                f"arguments name models {args.model_ids()}, "
                f"the task declares {list(task_model_ids)}"
            )
        if num_images is not None:
            have = args.task_config.num_images if isinstance(args, ImageTaskArgs) else None
            if have is not None and have != num_images:
                raise ArgsError(f"arguments ask for {have} images, the task declares {num_images}")

    def _image_model(self, model_id: str, folder: Path) -> ImageModel:
        def load() -> tuple[ImageModel, int]:
            m = load_image_model(folder, self.device, self.dtype)
            return m, m.size_bytes

        m = self.cache.get(f"image:{model_id}", load, size_hint=lambda: _weights_size(folder))
        if not isinstance(m, ImageModel):  # pragma: no cover - keys are typed by prefix
            raise InferenceFailure(f"cache entry for {model_id} is not an image model")
        return m

    def _text_model(self, model_id: str, folder: Path) -> TextModel:
        def load() -> tuple[TextModel, int]:
            m = load_text_model(folder, self.device, self.dtype)
            return m, m.size_bytes

        m = self.cache.get(f"text:{model_id}", load, size_hint=lambda: _weights_size(folder))
        if not isinstance(m, TextModel):  # pragma: no cover
            raise InferenceFailure(f"cache entry for {model_id} is not a text model")
        return m

    def _run_image(
        self, args: ImageTaskArgs, folders: dict[str, Path], timings: dict[str, float]
    ) -> tuple[list[tuple[str, bytes]], bytes]:
        ids = args.model_ids()
        t = time.perf_counter()
        model = self._image_model(ids[0], folders[ids[0]])
        timings["load_s"] = time.perf_counter() - t
        lora_folder = folders[ids[1]] if len(ids) > 1 else None
        t = time.perf_counter()
        images = generate_images(model, args, self.device, lora_folder)
        timings["generate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        files = [(f"{i}.png", png_bytes(img)) for i, img in enumerate(images)]
        # Scored from the PNG bytes, exactly as the relay will recompute it.
        score = image_score(data for _, data in files)
        timings["encode_s"] = time.perf_counter() - t
        return files, score

    def _run_text(
        self, args: TextTaskArgs, folders: dict[str, Path], timings: dict[str, float]
    ) -> tuple[list[tuple[str, bytes]], bytes]:
        mid = args.model_ids()[0]
        t = time.perf_counter()
        model = self._text_model(mid, folders[mid])
        timings["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        response: dict[str, Any] = generate_text(model, args, mid, self.device)
        timings["generate_s"] = time.perf_counter() - t
        body = canonical_json(response)
        return [(TEXT_RESULT_NAME, body)], text_score(body)


__all__ = [
    "EngineSettings",
    "InferenceEngine",
    "InferenceFailure",
    "InferenceResult",
    "ModelUnavailable",
    "OutOfMemory",
    "release_memory",
]
