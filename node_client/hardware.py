"""What the node declares on-chain about its hardware: GPU name and VRAM in whole GB.

On-chain the GPU is `keccak256(bytes(gpu_name))` and VRAM a uint16 of GB. A machine
without CUDA declares the configured CPU name ("CPU" by default) and the configured VRAM
(0 by default): tasks asking for VRAM never select it, text tasks pinned to "CPU" do.
"""
from __future__ import annotations

import logging
import platform
from typing import Literal

import torch
from eth_utils import keccak
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

CPU_GPU_NAME = "CPU"
MAX_VRAM_GB = 2**16 - 1


class HardwareInfo(BaseModel):
    gpu_name: str = Field(min_length=1, max_length=128)
    vram_gb: int = Field(ge=0, le=MAX_VRAM_GB)
    device: Literal["cuda", "cpu"]
    torch_version: str
    cuda_version: str | None = None

    @property
    def gpu_id(self) -> bytes:
        """keccak256(bytes(gpu_name)): the GPU as the contracts store it."""
        return keccak(self.gpu_name.encode("utf-8"))


def vram_gb(total_bytes: int) -> int:
    """Whole GB as users know them: a "24 GB" card reports ~23.6 GiB; round to nearest."""
    return max(0, min(MAX_VRAM_GB, round(total_bytes / 2**30)))


def detect_hardware(
    *,
    cpu_gpu_name: str = CPU_GPU_NAME,
    cpu_vram_gb: int = 0,
    device_index: int = 0,
    prefer_cpu: bool = False,
) -> HardwareInfo:
    """The GPU torch sees (CUDA device `device_index`), or the CPU declaration."""
    if not prefer_cpu and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device_index)
        info = HardwareInfo(
            gpu_name=props.name,
            vram_gb=vram_gb(props.total_memory),
            device="cuda",
            torch_version=torch.__version__,
            cuda_version=torch.version.cuda,
        )
    else:
        info = HardwareInfo(
            gpu_name=cpu_gpu_name,
            vram_gb=cpu_vram_gb,
            device="cpu",
            torch_version=torch.__version__,
        )
    log.info(
        "hardware: %s, %d GB VRAM, torch %s on %s (%s)",
        info.gpu_name,
        info.vram_gb,
        info.torch_version,
        info.device,
        platform.machine(),
    )
    return info
