"""Prints one table of every benchmark result found under bench/*.json.

Each benchmark script writes its own JSON file (or its own key of bench/gas.json);
this flattens them all into `file  metric  value` rows. Run by `make bench` last.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        yield prefix, ", ".join(str(v) for v in value)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _flatten(f"{prefix}[{i}]", inner)
    else:
        yield prefix, value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def main(folder: str = "bench") -> int:
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        print(f"no benchmark results under {folder}/ (run `make bench`)")
        return 1
    rows = [(f.stem, k, _fmt(v)) for f in files for k, v in _flatten("", json.loads(f.read_text()))]
    widths = [max(len(r[i]) for r in rows + [("file", "metric", "value")]) for i in range(3)]
    line = "  ".join("{:<%d}" % w for w in widths[:2]) + "  {:>%d}" % widths[2]
    print(line.format("file", "metric", "value"))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
