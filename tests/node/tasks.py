"""Argument documents for the node tests (tiny models, small sizes)."""
from __future__ import annotations

import json
from typing import Any

from crynux_common.schemas import TaskType
from node_client.inference import EngineSettings, InferenceEngine, TorchSettings
from node_client.models import ModelRegistry


def image_args(**over: Any) -> dict[str, Any]:
    cfg = {"image_width": 64, "image_height": 64, "steps": 4, "seed": 1, "num_images": 1}
    cfg["cfg"] = 7.0
    cfg.update(over.pop("task_config", {}))
    doc = {
        "version": "1.0",
        "base_model": "base:tiny-sd",
        "prompt": "a red fox in the snow",
        "negative_prompt": "blurry",
        "task_config": cfg,
    }
    doc.update(over)
    return doc


def text_args(**over: Any) -> dict[str, Any]:
    gen = {"max_new_tokens": 16, "min_new_tokens": 16, "do_sample": True, "temperature": 0.9,
           "top_p": 0.95, "top_k": 40}
    gen.update(over.pop("generation_config", {}))
    doc = {
        "version": "1.0",
        "model": "base:tiny-llama",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a short poem about the sea."},
        ],
        "generation_config": gen,
        "seed": 7,
    }
    doc.update(over)
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


# One torch thread: tiny models gain nothing from more, and on a busy 2-core CI machine
# oversubscribed threads make each step ~10x slower. Both "nodes" must use the same count.
THREADS = 1


def make_engine(registry: ModelRegistry, **settings: Any) -> InferenceEngine:
    return InferenceEngine(
        registry, EngineSettings(torch=TorchSettings(num_threads=THREADS), **settings)
    )


#: Tasks the second node process runs, by name (see the `second_node` fixture).
SECOND_NODE_TASKS: dict[str, tuple[int, bytes]] = {
    "image2": (TaskType.IMAGE, encode(image_args(task_config={"num_images": 2}))),
    "image2_seed3": (TaskType.IMAGE, encode(image_args(task_config={"num_images": 2, "seed": 3}))),
    "llama": (TaskType.TEXT, encode(text_args())),
    "gpt2": (TaskType.TEXT, encode(text_args(model="base:tiny-gpt2"))),
    "invalid": (TaskType.IMAGE, encode(image_args(task_config={"steps": 0}))),
}
