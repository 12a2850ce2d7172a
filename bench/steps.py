"""What one decode step costs with 1, 2, 4, 7 and 8 sequences in the batch, in Herd's own context.

This is the ceiling under the concurrency figures: if a step of 8 rows costs nearly 8 steps of one,
no scheduling can make 8 streams much faster than one. Each row is a distinct sequence 64 tokens into
its text, every row asks for logits (as every generating sequence does), and the weights are loaded as
the worker loads them: repacked only when asked (the default mode, where workers/repack_probe.py allows it),
never in the batch-invariant mode.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

ROWS = (1, 2, 4, 7, 8)
CONTEXT_TOKENS = 64


def bench_decode_rows(
    gguf: Path,
    threads: int,
    num_ctx: int,
    repeats: int = 15,
    rows: tuple[int, ...] = ROWS,
    *,
    repack: bool = False,
) -> dict[int, float]:
    """Median milliseconds of one llama_decode call of `rows` rows, for each entry of ``rows``."""
    import llama_cpp as llama

    from workers.engine import BatchEngine
    from workers.llama import LlamaModel

    rows_list = tuple(rows)
    model = LlamaModel(gguf, repack=repack)
    engine = BatchEngine(model, n_ctx=num_ctx, n_parallel=max(rows_list), n_threads=threads)
    memory = llama.llama_get_memory(engine.ctx)
    # The engine's own batch, filled by its own _put, as its decode steps fill it.
    batch, put = engine._batch, engine._put

    def step_ms(rows: int) -> float:
        llama.llama_memory_clear(memory, True)
        for seq in range(rows):  # each sequence's context, decoded (untimed) on its own
            for pos in range(CONTEXT_TOKENS):
                put(pos, 1000 + 7 * seq + pos, pos, seq, False)
            batch.n_tokens = CONTEXT_TOKENS
            if llama.llama_decode(engine.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed while filling the context")
        for seq in range(rows):
            put(seq, 2000 + seq, CONTEXT_TOKENS, seq, True)
        batch.n_tokens = rows
        started = time.perf_counter()
        if llama.llama_decode(engine.ctx, batch) != 0:
            raise RuntimeError(f"llama_decode of {rows} rows failed")
        return (time.perf_counter() - started) * 1000

    try:
        step_ms(1)  # warm-up
        # Interleaved, so that outside load falls on every row count alike.
        samples: dict[int, list[float]] = {n: [] for n in rows_list}
        for _ in range(repeats):
            for n in rows_list:
                samples[n].append(step_ms(n))
        return {n: statistics.median(ms) for n, ms in samples.items()}
    finally:
        engine.close()
        model.close()
