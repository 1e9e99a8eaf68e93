"""Inference for the node: diffusers image tasks, transformers text tasks, a warm model cache.

Public API: InferenceEngine, EngineSettings, TorchSettings, InferenceResult,
InferenceFailure (OutOfMemory, ModelUnavailable).
"""
from .device import TorchSettings
from .engine import EngineSettings, InferenceEngine, InferenceResult
from .errors import InferenceFailure, ModelUnavailable, OutOfMemory

__all__ = [
    "EngineSettings",
    "InferenceEngine",
    "InferenceFailure",
    "InferenceResult",
    "ModelUnavailable",
    "OutOfMemory",
    "TorchSettings",
]
