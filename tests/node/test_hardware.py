"""Hardware declaration: GPU name and whole-GB VRAM, or the CPU declaration."""
from __future__ import annotations

import pytest
import torch
from eth_utils import keccak

from node_client.hardware import HardwareInfo, detect_hardware, vram_gb


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only declaration")
def test_detectHardware_cpuMachineDeclaresCpu():
    info = detect_hardware()
    assert (info.gpu_name, info.vram_gb, info.device) == ("CPU", 0, "cpu")
    assert info.gpu_id == keccak(b"CPU")
    assert info.torch_version == torch.__version__


def test_detectHardware_cpuDeclarationIsConfigurable():
    info = detect_hardware(cpu_gpu_name="CPU-x86_64", cpu_vram_gb=16, prefer_cpu=True)
    assert (info.gpu_name, info.vram_gb, info.device) == ("CPU-x86_64", 16, "cpu")
    assert info.gpu_id == keccak(text="CPU-x86_64")


@pytest.mark.parametrize(
    "total, gb",
    [(25_757_220_864, 24), (8_589_934_592, 8), (12_878_610_432, 12), (0, 0), (2**60, 2**16 - 1)],
)
def test_vramGb_roundsToWholeGb(total, gb):
    assert vram_gb(total) == gb


def test_hardwareInfo_failsIfVramOutOfUint16():
    with pytest.raises(ValueError):
        HardwareInfo(gpu_name="X", vram_gb=2**16, device="cuda", torch_version="2")
