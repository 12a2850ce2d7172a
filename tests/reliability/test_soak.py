"""Soak: mixed traffic at a steady rate, with memory, errors and latency measured.

Open loop: a request is sent every 1/RATE seconds whatever the previous ones are doing, so a slowdown
shows up as latency rather than as a lower rate. HERD_SOAK_SECONDS sets the length: `make test` runs 30 s
(the default), `make soak` (which CI runs after it) the full ten minutes, with the same assertions.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from stack.supervisor import Stack
from tests.e2e.conftest import start_stack
from tests.reliability.conftest import children, percentile, rss_kib

SOAK_S = float(os.environ.get("HERD_SOAK_SECONDS", "30"))
# Memory and latency are measured after the warm-up: a quarter of a short run, at most 30 s.
WARMUP_S = min(30.0, SOAK_S / 4)
RATE = 4.0  # requests per second
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 8}
# The mix: generation (whole and streamed), chat, embeddings, and the two listing routes.
MIX: list[tuple[str, str, str, dict[str, object] | None]] = [
    (
        "generate",
        "POST",
        "/api/generate",
        {"model": "tiny-a", "prompt": "hi", "stream": False, "options": GREEDY},
    ),
    (
        "chat",
        "POST",
        "/api/chat",
        {
            "model": "tiny-chat",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": GREEDY,
        },
    ),
    ("embed", "POST", "/api/embed", {"model": "tiny-a", "input": ["hello", "world"]}),
    ("ps", "GET", "/api/ps", None),
    ("generate-stream", "POST", "/api/generate", {"model": "tiny-a", "prompt": "hello", "options": GREEDY}),
    ("tags", "GET", "/api/tags", None),
]
# Growth allowed between the end of warm-up and the end of the run, per process kind: 16 MiB over
# 2,400 requests fails any leak of 7 KiB or more per request (one retained prompt, response or event
# list), while staying well above what settles after warm-up (allocator arenas, Python's free lists,
# prometheus' multiprocess files): about 1.4 MiB for the API and 0.8 MiB for the worker, measured.
API_GROWTH_KIB = 16 * 1024
WORKER_GROWTH_KIB = 16 * 1024


def _api_pids(stack: Stack) -> list[int]:
    assert stack.api is not None and stack.api.pid is not None
    return [stack.api.pid, *children(stack.api.pid)]


def _rss(stack: Stack) -> dict[str, int]:
    """RSS in KiB: the gunicorn master and its uvicorn workers together, and each Herd worker."""
    sizes = {"api": sum(rss_kib(p) for p in _api_pids(stack))}
    for w in stack.workers:
        assert w.pid is not None
        sizes[w.name] = rss_kib(w.pid)
    return sizes


def _request(
    client: httpx.Client, method: str, path: str, body: dict[str, object] | None
) -> tuple[int, float]:
    started = time.monotonic()
    r = client.request(method, path, json=body)
    r.read()
    if path == "/api/generate" and body and body.get("stream", True):
        # A streamed answer counts as an error unless its last line is the final chunk.
        assert r.text.strip().splitlines()[-1].find('"done":true') >= 0, r.text[-300:]
    return r.status_code, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.timeout(SOAK_S + 300)  # the run itself, plus the stack's start and stop
def test_mixed_traffic_keeps_memory_bounded_and_answers_everything(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {"OLLAMA_NUM_PARALLEL": "4"}
    with (
        start_stack(models_dir, tmp_path_factory.mktemp("run-soak"), env=env) as stack,
        httpx.Client(
            base_url=stack.settings.base_url, timeout=60, limits=httpx.Limits(max_connections=32)
        ) as client,
        ThreadPoolExecutor(max_workers=16) as pool,
    ):
        api_pids = _api_pids(stack)
        results: list[tuple[str, Future[tuple[int, float]], float]] = []
        rss_start: dict[str, int] = {}
        trend: list[tuple[float, dict[str, int]]] = []
        started = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - started) < SOAK_S:
            if not rss_start and elapsed >= WARMUP_S:
                rss_start = _rss(stack)
            if not trend or elapsed - trend[-1][0] >= 60:
                trend.append((elapsed, _rss(stack)))
            name, method, path, body = MIX[n % len(MIX)]
            results.append((name, pool.submit(_request, client, method, path, body), elapsed))
            n += 1
            time.sleep(max(0.0, started + n / RATE - time.monotonic()))
        outcomes = [(name, f.exception() or f.result(), at) for name, f, at in results]
        rss_end = _rss(stack)
        # No Herd process was restarted or replaced along the way.
        assert _api_pids(stack) == api_pids
        assert all(w.restarts == 0 and w.alive for w in stack.workers)

    errors = Counter(
        f"{name}: {o!r}" for name, o, _ in outcomes if isinstance(o, BaseException) or o[0] != 200
    )
    latencies = [o[1] for _, o, at in outcomes if not isinstance(o, BaseException) and at >= WARMUP_S]
    by_kind = {
        kind: [o[1] for name, o, at in outcomes if name == kind and not isinstance(o, BaseException)]
        for kind, *_ in MIX
    }
    print(
        f"\nsoak: {len(outcomes)} requests in {SOAK_S:.0f}s at {RATE:g}/s, {sum(errors.values())} errors {dict(errors)}"
    )
    print(
        "soak latency (after warm-up): "
        + ", ".join(f"p{q} {percentile(latencies, q) * 1000:.0f} ms" for q in (50, 95, 99))
        + f", max {max(latencies) * 1000:.0f} ms"
    )
    for kind, values in by_kind.items():
        print(
            f"  {kind}: p50 {percentile(values, 50) * 1000:.0f} ms, p99 {percentile(values, 99) * 1000:.0f} ms"
        )
    for at, sizes in trend:
        print(f"  rss at {at:4.0f}s: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in sizes.items()))
    print(
        "soak rss start -> end: "
        + ", ".join(f"{k} {rss_start[k] / 1024:.1f} -> {rss_end[k] / 1024:.1f} MiB" for k in rss_end)
    )
    assert not errors
    assert rss_end["api"] - rss_start["api"] <= API_GROWTH_KIB
    for w, size in rss_end.items():
        if w != "api":
            assert size - rss_start[w] <= WORKER_GROWTH_KIB, w
