"""scripts/plot_emission.py writes its four PNG plots into the folder it is given."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_plotScript_writesPngFiles(tmp_path):
    out = tmp_path / "plots"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot_emission.py"), str(out)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["monthly_emission.png", "node_mining.png", "task_mining.png", "total_supply.png"]
    for path in out.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
