"""`make bench`: decode speed, time to first token and worker memory on the bundled model, in one run.

One stream three ways: (a) llama-cpp-python in-process, (b) Herd's worker engine in-process, (c) the
full stack over HTTP (NUM_PARALLEL=1). Then 1, 2, 4 and 8 concurrent streams through the full stack
with NUM_PARALLEL=8 and against llama-cpp-python's own server, and the worker's RSS at NUM_PARALLEL=1
against 8. Results go to docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks-concurrency.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.concurrency import HERD, HERD_THROUGHPUT, LEVELS, LLAMA_SERVER, NUM_PARALLEL, bench_concurrency
from bench.memory import kv_bytes_per_token
from bench.plot import plot_concurrency
from bench.report import (
    SINGLE_TPS_TARGET,
    SINGLE_TTFT_TARGET_MS,
    build_server,
    concurrency_targets,
    memory_figures,
    render_markdown,
    step_figures,
)
from bench.single import PROMPT, Result, bench_engine, bench_llama_cpp, bench_stack
from bench.stats import LevelSummary, summarize
from bench.steps import bench_decode_rows
from herd.names import ModelName
from herd.store import ModelStore
from stack.setup import ensure_default_model

N_TOKENS = 128
NUM_CTX = 4096
ROOT = Path(__file__).resolve().parent.parent
PLOT_NAME = "benchmarks-concurrency.png"

logger = logging.getLogger("bench")


def _single_json(results: list[Result]) -> dict[str, Any]:
    _, b, c = results
    return {
        "results": [
            {
                "name": r.name,
                "ttft_ms": r.ttft_ms,
                "decode_tps": r.decode_tps,
                "runs": [asdict(x) for x in r.runs],
            }
            for r in results
        ],
        "targets": {
            "stack_vs_engine_tps_ratio": c.decode_tps / b.decode_tps,
            "stack_vs_engine_tps_target": SINGLE_TPS_TARGET,
            "stack_minus_engine_ttft_ms": c.ttft_ms - b.ttft_ms,
            "stack_minus_engine_ttft_target_ms": SINGLE_TTFT_TARGET_MS,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each single-stream figure")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every concurrency level per server")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # The stack's supervisor logs every process start and stop; the benchmark's own lines are enough.
    logging.getLogger("app").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    load_before = os.getloadavg()[0]
    date = datetime.now(UTC).isoformat(timespec="seconds")
    with (
        tempfile.TemporaryDirectory(prefix="herd-bench-models-") as models,
        tempfile.TemporaryDirectory(prefix="herd-bench-logs-") as logs,
    ):
        store = ModelStore(Path(models))
        ensure_default_model(store)
        gguf = store.get(ModelName.parse("gemma3:270m")).model_path

        results = []
        for bench in (bench_llama_cpp, bench_engine):
            result = bench(gguf, args.threads, args.repeats, N_TOKENS, NUM_CTX)
            logger.info("%s: %.1f tok/s, ttft %.1f ms", result.name, result.decode_tps, result.ttft_ms)
            results.append(result)
        result, memory_1 = bench_stack(Path(models), args.threads, args.repeats, N_TOKENS, NUM_CTX)
        logger.info("%s: %.1f tok/s, ttft %.1f ms", result.name, result.decode_tps, result.ttft_ms)
        results.append(result)

        run = bench_concurrency(
            Path(models), gguf, args.threads, N_TOKENS, NUM_CTX, args.rounds, Path(logs), logger.info
        )
        kv_per_token = kv_bytes_per_token(gguf)
        step_ms = bench_decode_rows(gguf, args.threads, NUM_CTX)
        logger.info("decode step by rows: %s", ", ".join(f"{k}: {v:.1f} ms" for k, v in step_ms.items()))

    herd_levels: list[LevelSummary] = [summarize(run.herd[c]) for c in LEVELS]
    throughput_levels: list[LevelSummary] = [summarize(run.herd_throughput[c]) for c in LEVELS]
    llama_levels: list[LevelSummary] = [summarize(run.llama_server[c]) for c in LEVELS]
    data: dict[str, Any] = {
        "date": date,
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()[0],
        },
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "model": "Gemma 3 270M (gemma3:270m, Q4_K_M)",
        "tokens": N_TOKENS,
        "num_ctx": NUM_CTX,
        "prompt_chars": len(PROMPT),
        **_single_json(results),
        "concurrency": {
            "levels": list(LEVELS),
            "rounds": args.rounds,
            "num_parallel": NUM_PARALLEL,
            "herd": build_server(HERD, run.herd),
            "herd_throughput": build_server(HERD_THROUGHPUT, run.herd_throughput),
            "llama_server": build_server(LLAMA_SERVER, run.llama_server),
            "targets": concurrency_targets(herd_levels, llama_levels),
            "targets_throughput": concurrency_targets(throughput_levels, llama_levels),
        },
        "steps": step_figures(step_ms, NUM_PARALLEL),
        "memory": memory_figures(kv_per_token, NUM_CTX, asdict(memory_1), asdict(run.memory)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(data, indent=2) + "\n")
    plot_concurrency(data["concurrency"], args.out / PLOT_NAME)
    (args.out / "benchmarks.md").write_text(render_markdown(data, PLOT_NAME))
    logger.info("wrote %s, benchmarks.json and %s", args.out / "benchmarks.md", PLOT_NAME)


if __name__ == "__main__":
    main()
