"""Plot the CNX emission schedules: `python scripts/plot_emission.py OUTDIR`.

Writes into OUTDIR (created if missing), from the Python reference curves
(tests/reference/emission.py), over 20 years:
  node_mining.png   cumulative and monthly node-mining emission (E_A, 5-year half-life)
  task_mining.png   cumulative and monthly task-mining emission (E_B, normalised Avrami curve)
  monthly_emission.png  both pools' monthly emission side by side
  total_supply.png  genesis + node mining + task mining against the cap
Assumes the network is always online (node mining's clock runs) and that every month has
tasks (no roll-over). A plain Python script (matplotlib, Agg backend); not an Ape script.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from tests.reference.emission import (  # noqa: E402
    CAP_WEI,
    CNX,
    GENESIS_WEI,
    MONTH_SECONDS,
    NODE_POOL_WEI,
    TASK_POOL_WEI,
    node_cumulative,
    task_cumulative,
)

log = logging.getLogger("plot_emission")

YEARS = 20
MONTHS = 12 * YEARS
BILLION = 10**9 * CNX
MILLION = 10**6 * CNX


def _series() -> dict[str, list[float]]:
    """Month-end values of both curves (CNX units scaled for the axes)."""
    months = list(range(MONTHS + 1))
    node_cum = [float(node_cumulative(a * MONTH_SECONDS)) for a in months]
    task_cum = [float(task_cumulative(a)) for a in months]
    return {
        "years": [a / 12 for a in months],
        "node_cum": [v / BILLION for v in node_cum],
        "task_cum": [v / BILLION for v in task_cum],
        "node_month": [(node_cum[a + 1] - node_cum[a]) / MILLION for a in range(MONTHS)],
        "task_month": [(task_cum[a + 1] - task_cum[a]) / MILLION for a in range(MONTHS)],
        "month_years": [a / 12 for a in range(MONTHS)],
    }


def _pool_plot(path: Path, title: str, years, cumulative, month_years, monthly, pool_wei: int) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    top.plot(years, cumulative, color="tab:blue")
    top.axhline(pool_wei / BILLION, color="grey", linestyle="--", label=f"pool {pool_wei / BILLION:.3f} B CNX")
    top.set_ylabel("cumulative (billion CNX)")
    top.set_title(title)
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    bottom.bar(month_years, monthly, width=1 / 12, color="tab:orange", align="edge")
    bottom.set_ylabel("per month (million CNX)")
    bottom.set_xlabel("years since start")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _monthly_plot(path: Path, s: dict[str, list[float]]) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(s["month_years"], s["node_month"], label="node mining (E_A)")
    ax.plot(s["month_years"], s["task_month"], label="task mining (E_B)")
    ax.set_xlabel("years since start")
    ax.set_ylabel("emission per month (million CNX)")
    ax.set_title("Monthly emission of the two pools")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _supply_plot(path: Path, s: dict[str, list[float]]) -> None:
    genesis = [GENESIS_WEI / BILLION] * len(s["years"])
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.stackplot(
        s["years"],
        genesis,
        s["node_cum"],
        s["task_cum"],
        labels=["genesis (20%)", "node mining", "task mining"],
        alpha=0.8,
    )
    ax.axhline(CAP_WEI / BILLION, color="black", linestyle="--", label=f"cap {CAP_WEI / BILLION:.3f} B CNX")
    ax.set_xlabel("years since start")
    ax.set_ylabel("total supply (billion CNX)")
    ax.set_title("CNX total supply (network always online, rewards claimed)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_all(outdir: Path) -> list[Path]:
    """Write the four PNG files into `outdir`; return their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    s = _series()
    paths = [outdir / name for name in ("node_mining.png", "task_mining.png", "monthly_emission.png", "total_supply.png")]
    _pool_plot(paths[0], "Node mining: E_A(t) = S_A (1 - 2^(-t / 60 months))", s["years"], s["node_cum"],
               s["month_years"], s["node_month"], NODE_POOL_WEI)
    _pool_plot(paths[1], "Task mining: E_B(a) = S_B (1 - exp(-0.0003 ((0.5a + 0.8)^2 - 0.64)))", s["years"],
               s["task_cum"], s["month_years"], s["task_month"], TASK_POOL_WEI)
    _monthly_plot(paths[2], s)
    _supply_plot(paths[3], s)
    return paths


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="folder to write the PNG files into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in plot_all(args.outdir):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
