"""Run one task locally, outside the protocol: `python -m node_client.inference`.

    python -m node_client.inference --task-type image --args args.json --threads 2 --out out/

Prints one JSON line: {"score": hex, "error": str|null, "files": [[name, sha256hex]], "timings"}.
Used by the tests to run a second, independent engine process, and by operators to try a
model before joining.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

from crynux_common.schemas import TaskType
from node_client.models import ModelRegistry, ModelSource, RegistrySettings

from .device import TorchSettings
from .engine import EngineSettings, InferenceEngine


def _model(spec: str) -> ModelSource:
    mid, sep, path = spec.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--model wants ID=FOLDER, got {spec!r}")
    return ModelSource(id=mid, path=Path(path))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m node_client.inference", description=__doc__)
    p.add_argument("--task-type", choices=["image", "text"], required=True)
    p.add_argument("--args", required=True, help="argument JSON file, '-' for stdin")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--tiny-cache", type=Path, default=None, help="tiny model cache folder")
    p.add_argument("--model", type=_model, action="append", default=[], help="ID=FOLDER")
    p.add_argument("--repeat", type=int, default=1, help="run the task this many times")
    p.add_argument("--out", type=Path, default=None, help="write the result files here")
    p.add_argument("-v", "--verbose", action="store_true")
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, stream=sys.stderr)

    raw = sys.stdin.buffer.read() if ns.args == "-" else Path(ns.args).read_bytes()
    registry = ModelRegistry(
        RegistrySettings(models=ns.model, tiny_cache_dir=ns.tiny_cache, allow_download=False)
    )
    engine = InferenceEngine(
        registry, EngineSettings(torch=TorchSettings(device=ns.device, num_threads=ns.threads))
    )
    tt = TaskType.IMAGE if ns.task_type == "image" else TaskType.TEXT
    for _ in range(ns.repeat):
        result = engine.run(tt, raw)
        print(
            json.dumps(
                {
                    "score": result.score.hex(),
                    "error": result.error,
                    "files": [[n, hashlib.sha256(b).hexdigest()] for n, b in result.files],
                    "timings": result.timings,
                    "loads": dict(engine.cache.stats.loads),
                }
            ),
            flush=True,
        )
    if ns.out is not None:
        ns.out.mkdir(parents=True, exist_ok=True)
        for name, data in result.files:
            (ns.out / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
