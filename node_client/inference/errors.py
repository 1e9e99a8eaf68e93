"""Exceptions of the inference engine.

Invalid task arguments are not exceptions at the engine boundary: the engine turns them
into the error score (every honest node agrees on them). What is raised is a failure of
this node (out of memory, a model it cannot get, a crash inside torch): the caller must
not commit anything for it, since another node would have computed a real result.
"""
from __future__ import annotations

import torch


class InferenceFailure(RuntimeError):
    """This node could not run the task. Log it, maybe restart the worker; never commit an
    error score for it."""


class OutOfMemory(InferenceFailure):
    """The device ran out of memory during loading or generation."""


class ModelUnavailable(InferenceFailure):
    """The model exists but this node cannot get it now (not downloaded, downloads off,
    network error)."""


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is the device (or the host) running out of memory."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
