"""`make bench`: decode speed and time to first token, three ways, in one run on the bundled model.

(a) in-process with llama-cpp-python's `Llama.create_completion`, (b) in-process with Herd's worker
engine, (c) through the full stack (nginx → gunicorn → Redis → worker) over HTTP. Greedy sampling,
128 generated tokens, the same prompt and thread count everywhere; each figure is the median of
several runs after a warm-up. Results go to docs/benchmarks.md and docs/benchmarks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from app.names import ModelName
from app.stack.settings import StackSettings
from app.stack.setup import ensure_default_model
from app.stack.supervisor import Stack
from app.store import ModelStore

PROMPT = "Here is a long story about a lighthouse keeper and the storm that changed his life.\n\n"
N_TOKENS = 128
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    ttft_ms: float
    decode_tps: float
    tokens: int


@dataclass
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


def bench_llama_cpp(gguf: Path, threads: int, repeats: int) -> Result:
    """(a) llama-cpp-python's high-level API, streaming."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    eos = llm.token_eos()

    def stream() -> list[float]:
        arrivals = []
        for _ in llm.create_completion(
            PROMPT, max_tokens=N_TOKENS, temperature=0, stream=True, logit_bias={eos: float("-inf")}
        ):
            arrivals.append(time.perf_counter())
        return arrivals

    stream()  # warm-up
    runs = [_timed(stream) for _ in range(repeats)]
    llm.close()
    return Result("(a) llama-cpp-python Llama.create_completion", runs)


def bench_engine(gguf: Path, threads: int, repeats: int) -> Result:
    """(b) Herd's batching engine, in-process, one sequence."""
    from workers.engine import BatchEngine, SequenceRequest, TokenEvent
    from workers.llama import LlamaModel
    from workers.sampling import SamplingParams

    model = LlamaModel(gguf)
    engine = BatchEngine(model, n_ctx=4096, n_parallel=1, n_threads=threads)
    prompt = model.tokenize(PROMPT)
    greedy = SamplingParams(temperature=0, repeat_penalty=1.0)

    def stream() -> list[float]:
        engine.submit(SequenceRequest("bench", prompt, greedy, max_tokens=N_TOKENS))
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


def bench_stack(models_dir: Path, threads: int, repeats: int) -> Result:
    """(c) The full stack over HTTP through nginx, streaming NDJSON."""
    with tempfile.TemporaryDirectory(prefix="herd-bench-") as run_dir:
        env = {"HERD_THREADS": str(threads), "OLLAMA_NUM_PARALLEL": "1"}
        settings = StackSettings(
            OLLAMA_HOST="127.0.0.1:11534",
            HERD_API_PORT=11535,
            HERD_REDIS_PORT=11536,
            HERD_RUN_DIR=Path(run_dir),
            OLLAMA_MODELS=models_dir,
        )
        stack = Stack(settings, env=env)
        stack.start()
        try:
            url = f"{settings.base_url}/api/generate"
            body = {
                "model": "gemma3:270m",
                "prompt": PROMPT,
                "raw": True,
                "options": {
                    "temperature": 0,
                    "num_predict": N_TOKENS,
                    "repeat_penalty": 1.0,
                    "num_ctx": 4096,
                },
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

                stream()
                runs = [_timed(stream) for _ in range(repeats)]
        finally:
            stack.stop()
    return Result("(c) full stack via nginx (HTTP, NDJSON)", runs)


def write_report(results: list[Result], threads: int, out_dir: Path) -> None:
    a, b, c = results
    ratio_tps = c.decode_tps / b.decode_tps
    ttft_delta = c.ttft_ms - b.ttft_ms
    data = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "threads": threads, "python": platform.python_version()},
        "model": "gemma3:270m (Gemma 3 270M Q4_K_M)",
        "tokens": N_TOKENS,
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
            "stack_vs_engine_tps_ratio": ratio_tps,
            "stack_vs_engine_tps_target": 0.95,
            "stack_minus_engine_ttft_ms": ttft_delta,
            "stack_minus_engine_ttft_target_ms": 15.0,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks.json").write_text(json.dumps(data, indent=2) + "\n")
    rows = "\n".join(
        f"| {r.name} | {r.decode_tps:.1f} | {r.decode_tps / a.decode_tps:.2f} | {r.ttft_ms:.1f} |"
        for r in results
    )
    verdict_tps = "met" if ratio_tps >= 0.95 else "NOT met"
    verdict_ttft = "met" if ttft_delta <= 15 else "NOT met"
    (out_dir / "benchmarks.md").write_text(
        f"""# Benchmarks

Measured by `make bench` in one run on {data["date"]}: the bundled Gemma 3 270M (Q4_K_M), greedy
sampling, {N_TOKENS} generated tokens, {threads} threads, on this machine's CPU ({os.cpu_count()} cores).
Each figure is the median of {len(a.runs)} runs after a warm-up. The machine is shared and noisy:
compare the ratios, which were taken in the same run, not the absolute figures.

| path | decode tokens/s | ratio to (a) | time to first token (ms) |
|---|---|---|---|
{rows}

Targets:
- (c) decode tokens/s ≥ 0.95 × (b): **{ratio_tps:.3f}** × — {verdict_tps}.
- (c) time to first token within 15 ms of (b): **{ttft_delta:+.1f} ms** — {verdict_ttft}.

Time to first token includes prompt evaluation ({len(PROMPT)} characters of prompt); for (c) it also
includes the HTTP request through nginx, admission into Redis, the worker taking the job, and the relay
of the first NDJSON line. (a)'s time to first token is low because `Llama` keeps the previous run's KV
cache and, for the identical prompt, evaluates only its last token; Herd's engine evaluates the whole
prompt on every request (reusing a cached prefix across requests is left to the scheduling work).
Raw runs are in `benchmarks.json`.
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="herd-bench-models-") as models:
        store = ModelStore(Path(models))
        stored = ensure_default_model(store)
        gguf = store.get(ModelName.parse("gemma3:270m")).model_path
        assert stored.model_path == gguf
        results = []
        for bench in (bench_llama_cpp, bench_engine):
            result = bench(gguf, args.threads, args.repeats)
            print(
                f"{result.name}: {result.decode_tps:.1f} tok/s, ttft {result.ttft_ms:.1f} ms", file=sys.stderr
            )
            results.append(result)
        result = bench_stack(Path(models), args.threads, args.repeats)
        print(f"{result.name}: {result.decode_tps:.1f} tok/s, ttft {result.ttft_ms:.1f} ms", file=sys.stderr)
        results.append(result)
    write_report(results, args.threads, args.out)
    print(f"wrote {args.out / 'benchmarks.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
