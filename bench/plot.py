"""The concurrency figure: aggregate decode tokens/s and time to first token against streams, both servers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

# No display on a server or in CI: render straight to a file.
matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _or_nan(v: float | None) -> float:
    return float("nan") if v is None else v


def plot_concurrency(concurrency: Mapping[str, Any], path: Path) -> None:
    """Two panels from benchmarks.json's ``concurrency`` section, written as a PNG to ``path``."""
    fig, (tps_ax, ttft_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, style in (("herd", "o-"), ("herd_throughput", "^-."), ("llama_server", "s--")):
        if key not in concurrency:  # a run from before Herd was measured both ways
            continue
        server = concurrency[key]
        levels = [s["concurrency"] for s in server["levels"]]
        tps_ax.plot(levels, [s["decode_tps"] for s in server["levels"]], style, label=server["name"])
        # A level where no stream got a token has no TTFT: a gap in the line, not a zero.
        p50 = [_or_nan(s["ttft_p50_ms"]) for s in server["levels"]]
        p90 = [_or_nan(s["ttft_p90_ms"]) for s in server["levels"]]
        (line,) = ttft_ax.plot(levels, p50, style, label=f"{server['name']}, p50")
        ttft_ax.plot(levels, p90, style, color=line.get_color(), alpha=0.45, label=f"{server['name']}, p90")
    for ax in (tps_ax, ttft_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrency["levels"], [str(c) for c in concurrency["levels"]])
        ax.set_xlabel("concurrent streams")
        ax.grid(True, alpha=0.3)
    tps_ax.set_ylabel("aggregate decode tokens/s")
    tps_ax.set_ylim(bottom=0)
    tps_ax.set_title("Throughput")
    tps_ax.legend(fontsize=7)
    ttft_ax.set_ylabel("time to first token (ms)")
    ttft_ax.set_yscale("log")
    ttft_ax.set_title("Time to first token")
    ttft_ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
