"""Device, dtype and the torch flags that make results reproducible across nodes."""
from __future__ import annotations

import logging
import os
from typing import Literal

import torch
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


class TorchSettings(BaseModel):
    """How the engine uses torch. Two nodes that must agree bit for bit on CPU need the
    same thread count (see TOOLCHAIN.md: another count can change an image's raw bytes)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: torch intra-op threads; None keeps torch's default (the number of cores).
    num_threads: int | None = Field(default=None, ge=1, le=512)
    deterministic: bool = True


def resolve_device(setting: str = "auto") -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' configured but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def dtype_for(device: torch.device) -> torch.dtype:
    """fp16 on CUDA, float32 on the CPU (CPU fp16 is slow and CPU bf16 moves pHashes)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def configure_torch(settings: TorchSettings) -> torch.device:
    """Apply the process-wide torch flags and return the device to run on."""
    device = resolve_device(settings.device)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    if settings.deterministic:
        # Needed by cuBLAS for deterministic GEMMs; must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
    log.info(
        "torch %s on %s (%s), %d threads, deterministic=%s",
        torch.__version__,
        device,
        dtype_for(device),
        torch.get_num_threads(),
        settings.deterministic,
    )
    return device
