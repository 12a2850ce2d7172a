"""The concurrency benchmark: 1, 2, 4, 8 simultaneous streams through Herd's full stack (NUM_PARALLEL=8),
as configured by default and with HERD_BATCH_INVARIANT=false, and against llama-cpp-python's own server
on the same GGUF, threads and context size.

Both servers run side by side (idle one costs no CPU) and each round measures one, then the other, at
every level: outside load on the shared machine then falls on both alike, so their ratio stays fair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.llama_server import llama_server
from bench.load import Streamer, herd_streamer, openai_streamer, run_phase
from bench.stack import WorkerMemory, loaded_size, running_stack, worker_rss
from bench.stats import PhaseStats

LEVELS = (1, 2, 4, 8)
NUM_PARALLEL = 8
HERD = f"Herd full stack (NUM_PARALLEL={NUM_PARALLEL})"
HERD_THROUGHPUT = f"Herd, HERD_BATCH_INVARIANT=false (NUM_PARALLEL={NUM_PARALLEL})"
LLAMA_SERVER = "llama-cpp-python server (python -m llama_cpp.server)"


@dataclass(frozen=True)
class ConcurrencyRun:
    """Every round of every server at every level, and Herd's worker memory at NUM_PARALLEL=8."""

    herd: dict[int, list[PhaseStats]]
    herd_throughput: dict[int, list[PhaseStats]]
    llama_server: dict[int, list[PhaseStats]]
    memory: WorkerMemory


def _round(
    name: str, streamer: Streamer, into: dict[int, list[PhaseStats]], log: Callable[[str], None]
) -> None:
    for c in LEVELS:
        stats = run_phase(streamer, c)
        into[c].append(stats)
        log(
            f"  {name} c={c}: {stats.decode_tps:.1f} tok/s decode, {stats.tokens} tokens, "
            f"{stats.failed} failed, ttft max {max(stats.ttft_ms, default=0):.0f} ms"
        )


def bench_concurrency(
    models_dir: Path,
    gguf: Path,
    threads: int,
    n_tokens: int,
    num_ctx: int,
    rounds: int,
    log_dir: Path,
    log: Callable[[str], None],
) -> ConcurrencyRun:
    """``rounds`` rounds of 1, 2, 4, 8 streams on each server, after one warm-up request to each."""
    with (
        running_stack(models_dir, threads, NUM_PARALLEL, batch_invariant=True) as stack,
        running_stack(models_dir, threads, NUM_PARALLEL, batch_invariant=False) as throughput_stack,
        llama_server(gguf, threads, num_ctx, log_dir / "llama_cpp_server.log") as llama_base,
    ):
        herd = herd_streamer(f"{stack.url}/api/generate", n_tokens, num_ctx)
        herd_throughput = herd_streamer(f"{throughput_stack.url}/api/generate", n_tokens, num_ctx)
        llama = openai_streamer(f"{llama_base}/v1/completions", n_tokens)
        # The warm-up loads the model into the worker (and creates its 8-sequence context), so the
        # "loaded" RSS is read right after it.
        run_phase(herd, 1)
        rss_loaded = worker_rss(stack)
        run_phase(herd_throughput, 1)
        run_phase(llama, 1)
        herd_rounds: dict[int, list[PhaseStats]] = {c: [] for c in LEVELS}
        throughput_rounds: dict[int, list[PhaseStats]] = {c: [] for c in LEVELS}
        llama_rounds: dict[int, list[PhaseStats]] = {c: [] for c in LEVELS}
        for i in range(rounds):
            log(f"concurrency round {i + 1}/{rounds}")
            _round("herd", herd, herd_rounds, log)
            _round("herd (not batch-invariant)", herd_throughput, throughput_rounds, log)
            _round("llama-server", llama, llama_rounds, log)
        memory = WorkerMemory(NUM_PARALLEL, rss_loaded, worker_rss(stack), loaded_size(stack))
    return ConcurrencyRun(herd_rounds, throughput_rounds, llama_rounds, memory)
