"""Herd's engine alone, in this process: the concurrency phases without nginx, the API, Redis or a worker.

Beside the full stack's figures this splits Herd's gap to llama-server in two: what the engine itself
decodes (the same prompts, greedy, through BatchEngine's step loop as the worker runs it), and what the
relay in front of it costs. Each stream's tokens are timed as the engine emits them, and phase_stats
aggregates them exactly as it does the HTTP streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.load import PROMPTS
from bench.stats import PhaseStats, StreamRecord, phase_stats


def engine_phases(
    gguf: Path, *, threads: int, num_ctx: int, parallel: int, repack: bool, n_tokens: int
) -> tuple[Callable[[int], PhaseStats], Callable[[], None]]:
    """A function running one phase of `c` streams on a loaded engine, and one that unloads it."""
    from workers.engine import BatchEngine
    from workers.engine_io import DoneEvent, SequenceRequest
    from workers.llama import LlamaModel
    from workers.sampling import SamplingParams

    model = LlamaModel(gguf, repack=repack)
    engine = BatchEngine(model, n_ctx=num_ctx, n_parallel=parallel, n_threads=threads)
    greedy = SamplingParams(temperature=0, repeat_penalty=1.0)
    phases = 0

    def phase(concurrency: int) -> PhaseStats:
        nonlocal phases
        phases += 1
        keys = [f"phase{phases}-{i}" for i in range(concurrency)]
        sent: dict[str, float] = {}
        arrivals: dict[str, list[float]] = {k: [] for k in keys}
        tokens: dict[str, int] = {}
        # Raw prompts, as the HTTP phases send them (`raw: true`, /v1/completions).
        for key, prompt in zip(keys, PROMPTS, strict=False):
            sent[key] = time.perf_counter()
            engine.submit(
                SequenceRequest(key=key, prompt=model.tokenize(prompt), sampling=greedy, max_tokens=n_tokens)
            )
        while len(tokens) < concurrency:
            for event in engine.step():
                if isinstance(event, DoneEvent):
                    tokens[event.key] = event.eval_tokens
                elif event.text:
                    arrivals[event.key].append(time.perf_counter())
        records = [StreamRecord(sent[k], tuple(arrivals[k]), tokens[k], True) for k in keys]
        return phase_stats(concurrency, records)

    def close() -> None:
        engine.close()
        model.close()

    return phase, close
