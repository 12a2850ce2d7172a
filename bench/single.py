"""Single-stream decode speed and time to first token, three ways: (a) llama-cpp-python in-process,
(b) Herd's worker engine in-process, (c) the full stack (nginx → gunicorn → Redis → worker) over HTTP.

Greedy sampling, the same prompt and thread count everywhere; each figure is the median of several
runs after a warm-up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.stack import WorkerMemory, loaded_size, running_stack, worker_rss

PROMPT = "Here is a long story about a lighthouse keeper and the storm that changed his life.\n\n"


@dataclass(frozen=True)
class Run:
    ttft_ms: float
    decode_tps: float
    tokens: int


@dataclass(frozen=True)
class Result:
    name: str
    runs: list[Run]

    @property
    def ttft_ms(self) -> float:
        return statistics.median(r.ttft_ms for r in self.runs)

    @property
    def decode_tps(self) -> float:
        return statistics.median(r.decode_tps for r in self.runs)


def _timed(stream: Callable[[], list[float]]) -> Run:
    """stream() returns the arrival time of each token; the start is taken just before the call."""
    start = time.perf_counter()
    arrivals = stream()
    ttft = arrivals[0] - start
    decode = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
    return Run(ttft_ms=ttft * 1000, decode_tps=decode, tokens=len(arrivals))


def bench_llama_cpp(gguf: Path, threads: int, repeats: int, n_tokens: int, num_ctx: int) -> Result:
    """(a) llama-cpp-python's high-level API, streaming."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf), n_ctx=num_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    eos = llm.token_eos()

    def stream() -> list[float]:
        arrivals = []
        for _ in llm.create_completion(
            PROMPT, max_tokens=n_tokens, temperature=0, stream=True, logit_bias={eos: float("-inf")}
        ):
            arrivals.append(time.perf_counter())
        return arrivals

    stream()  # warm-up
    runs = [_timed(stream) for _ in range(repeats)]
    llm.close()
    return Result("(a) llama-cpp-python Llama.create_completion", runs)


def bench_engine(gguf: Path, threads: int, repeats: int, n_tokens: int, num_ctx: int) -> Result:
    """(b) Herd's batching engine, in-process, one sequence."""
    from workers.engine import BatchEngine
    from workers.engine_io import SequenceRequest, TokenEvent
    from workers.llama import LlamaModel
    from workers.sampling import SamplingParams

    model = LlamaModel(gguf)
    engine = BatchEngine(model, n_ctx=num_ctx, n_parallel=1, n_threads=threads)
    prompt = model.tokenize(PROMPT)
    greedy = SamplingParams(temperature=0, repeat_penalty=1.0)

    def stream() -> list[float]:
        engine.submit(SequenceRequest("bench", prompt, greedy, max_tokens=n_tokens))
        arrivals = []
        while engine.busy:
            for event in engine.step():
                if isinstance(event, TokenEvent):
                    arrivals.append(time.perf_counter())
        return arrivals

    stream()
    runs = [_timed(stream) for _ in range(repeats)]
    engine.close()
    model.close()
    return Result("(b) Herd worker engine, in-process", runs)


def bench_stack(
    models_dir: Path, threads: int, repeats: int, n_tokens: int, num_ctx: int
) -> tuple[Result, WorkerMemory]:
    """(c) The full stack over HTTP through nginx, streaming NDJSON, with OLLAMA_NUM_PARALLEL=1; and the
    worker's RSS with the model loaded and after the runs (the NUM_PARALLEL=1 side of the memory figure)."""
    with running_stack(models_dir, threads, num_parallel=1) as stack:
        url = f"{stack.url}/api/generate"
        body = {
            "model": "gemma3:270m",
            "prompt": PROMPT,
            "raw": True,
            "options": {"temperature": 0, "num_predict": n_tokens, "repeat_penalty": 1.0, "num_ctx": num_ctx},
        }
        with httpx.Client(timeout=120) as client:

            def stream() -> list[float]:
                arrivals = []
                with client.stream("POST", url, json=body) as response:
                    response.raise_for_status()
                    for line in response.iter_lines():
                        if line and '"done":false' in line:
                            arrivals.append(time.perf_counter())
                return arrivals

            stream()  # warm-up: loads the model
            rss_loaded = worker_rss(stack)
            runs = [_timed(stream) for _ in range(repeats)]
        memory = WorkerMemory(1, rss_loaded, worker_rss(stack), loaded_size(stack))
    return Result("(c) full stack via nginx (HTTP, NDJSON)", runs), memory
