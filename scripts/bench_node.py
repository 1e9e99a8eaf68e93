"""Benchmark of the node's inference engine on the tiny seeded models.

Measures
- the time a task spends in the engine beyond the bare pipeline call (same loaded model,
  same arguments): argument parsing, model lookup, cache lookup, scheduler/seed set-up,
  PNG encoding and pHash scoring. Target: <= 5% of the bare call (tiny SD, 128x128).
- cold versus warm model load (cold: a fresh engine reading the model from disk, with the
  libraries already imported; warm: the cached model of the previous task).

Runs interleave engine and bare calls and report medians, so a busy machine affects both
alike. Prints a table and writes bench/node.json.

    python scripts/bench_node.py [--size 128] [--steps 10] [--reps 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from crynux_common.schemas import TaskType, canonical_json, parse_image_args  # noqa: E402
from node_client.inference import EngineSettings, InferenceEngine, TorchSettings  # noqa: E402
from node_client.inference.text import generate_text  # noqa: E402
from node_client.models import ModelRegistry, RegistrySettings  # noqa: E402

TARGET_OVERHEAD_PCT = 5.0


def image_doc(size: int, steps: int, seed: int = 1) -> bytes:
    return canonical_json(
        {
            "version": "1.0",
            "base_model": "base:tiny-sd",
            "prompt": "a red fox in the snow, highly detailed",
            "negative_prompt": "blurry",
            "task_config": {
                "image_width": size,
                "image_height": size,
                "steps": steps,
                "seed": seed,
                "num_images": 1,
                "cfg": 7.0,
            },
        }
    )


def text_doc(tokens: int) -> bytes:
    return canonical_json(
        {
            "version": "1.0",
            "model": "base:tiny-llama",
            "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
            "generation_config": {
                "max_new_tokens": tokens,
                "min_new_tokens": tokens,
                "do_sample": True,
                "temperature": 0.9,
                "top_p": 0.95,
                "top_k": 40,
            },
            "seed": 7,
        }
    )


def bare_image_call(engine: InferenceEngine, raw: bytes) -> float:
    """The pipeline call alone, on the engine's loaded pipeline, same arguments."""
    args = parse_image_args(raw)
    pipe = engine.cache.get("image:base:tiny-sd", lambda: (None, 0)).pipe  # type: ignore[union-attr]
    cfg = args.task_config
    t = time.perf_counter()
    pipe(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt or None,
        width=cfg.image_width,
        height=cfg.image_height,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.cfg,
        num_images_per_prompt=cfg.num_images,
        generator=torch.Generator(device="cpu").manual_seed(cfg.seed),
        output_type="pil",
    )
    return time.perf_counter() - t


def bare_text_call(engine: InferenceEngine, raw: bytes) -> float:
    from crynux_common.schemas import parse_text_args

    args = parse_text_args(raw)
    tm = engine.cache.get("text:base:tiny-llama", lambda: (None, 0))
    t = time.perf_counter()
    generate_text(tm, args, "base:tiny-llama", engine.device)  # type: ignore[arg-type]
    return time.perf_counter() - t


def overhead(
    engine: InferenceEngine, task_type: TaskType, raw: bytes, reps: int, bare: Any
) -> dict[str, Any]:
    engine.run(task_type, raw)  # load + warm-up
    bare(engine, raw)
    engine_s, bare_s, inside_s = [], [], []
    for _ in range(reps):
        r = engine.run(task_type, raw)
        engine_s.append(r.timings["total_s"])
        inside_s.append(r.timings["total_s"] - r.timings["generate_s"])
        bare_s.append(bare(engine, raw))
    med_engine, med_bare = statistics.median(engine_s), statistics.median(bare_s)
    med_inside = statistics.median(inside_s)
    return {
        "bare_call_s": med_bare,
        "engine_task_s": med_engine,
        # Time measured inside the engine outside the pipeline call (parse, lookup, encode,
        # score): the overhead proper, free of run-to-run noise of the call itself.
        "overhead_s": med_inside,
        "overhead_pct": 100 * med_inside / med_bare,
        # The difference of medians includes that noise; shown for transparency.
        "difference_of_medians_pct": 100 * (med_engine - med_bare) / med_bare,
        "reps": reps,
    }


def cold_warm(registry: ModelRegistry, settings: EngineSettings, tt: TaskType, raw: bytes) -> dict:
    engine = InferenceEngine(registry, settings)  # nothing loaded
    cold = engine.run(tt, raw)
    warm = engine.run(tt, raw)
    return {
        "cold_load_s": cold.timings["load_s"],
        "warm_load_s": warm.timings["load_s"],
        "cold_task_s": cold.timings["total_s"],
        "warm_task_s": warm.timings["total_s"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny-cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench/node.json"))
    ns = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)

    # Import the pipeline libraries first: a cold load then measures reading the model.
    t = time.perf_counter()
    import diffusers  # noqa: F401
    from diffusers import StableDiffusionPipeline  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    import_s = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        cache = ns.tiny_cache or Path(tmp)
        registry = ModelRegistry(RegistrySettings(tiny_cache_dir=cache, allow_download=False))
        t = time.perf_counter()
        for mid in ("base:tiny-sd", "base:tiny-llama"):
            registry.resolve(mid)
        build_s = time.perf_counter() - t
        settings = EngineSettings(torch=TorchSettings(num_threads=ns.threads))

        img_raw = image_doc(ns.size, ns.steps)
        txt_raw = text_doc(ns.tokens)
        image_cw = cold_warm(registry, settings, TaskType.IMAGE, img_raw)
        text_cw = cold_warm(registry, settings, TaskType.TEXT, txt_raw)
        engine = InferenceEngine(registry, settings)
        image_oh = overhead(engine, TaskType.IMAGE, img_raw, ns.reps, bare_image_call)
        text_oh = overhead(engine, TaskType.TEXT, txt_raw, ns.reps, bare_text_call)

    report = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": str(engine.device),
            "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
        },
        "params": {"size": ns.size, "steps": ns.steps, "tokens": ns.tokens, "reps": ns.reps},
        "tiny_model_build_s": build_s,
        "library_import_s": import_s,
        "image": {**image_oh, **image_cw},
        "text": {**text_oh, **text_cw},
        "target_overhead_pct": TARGET_OVERHEAD_PCT,
        "meets_target": image_oh["overhead_pct"] <= TARGET_OVERHEAD_PCT,
    }

    rows = [
        ("bare pipeline call", "bare_call_s", "s"),
        ("task in the engine", "engine_task_s", "s"),
        ("engine overhead", "overhead_s", "s"),
        ("engine overhead", "overhead_pct", "%"),
        ("  (difference of medians)", "difference_of_medians_pct", "%"),
        ("cold model load", "cold_load_s", "s"),
        ("warm model load", "warm_load_s", "s"),
        ("cold task", "cold_task_s", "s"),
        ("warm task", "warm_task_s", "s"),
    ]
    img_title = f"image tiny-sd {ns.size}px/{ns.steps} steps"
    txt_title = f"text tiny-llama {ns.tokens} tok"
    print(f"\nNode engine benchmark ({report['machine']['device']}, {ns.threads} thread(s), "
          f"median of {ns.reps})")
    print(f"{'':28} {img_title:>28} {txt_title:>24}")
    for label, key, unit in rows:
        iv, tv = report["image"][key], report["text"][key]
        fmt = "{:.2f} %" if unit == "%" else "{:.4f} s"
        print(f"{label:28} {fmt.format(iv):>28} {fmt.format(tv):>24}")
    print(f"{'library import (once)':28} {import_s:>26.2f} s")
    verdict = "meets" if report["meets_target"] else "MISSES"
    print(f"\nimage overhead {image_oh['overhead_pct']:.2f}% {verdict} the "
          f"<= {TARGET_OVERHEAD_PCT:.0f}% target")
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
