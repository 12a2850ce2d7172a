"""The queue bound, a worker dying mid-stream, and its restart — on a stack of their own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stack.supervisor import Stack
from tests.e2e.conftest import GEMMA, start_stack
from tests.support.prompts import endless_stream

LONG = endless_stream(GEMMA)
SHORT = {"model": GEMMA, "prompt": "Hi", "stream": False, "options": {"temperature": 0, "num_predict": 2}}


@pytest.fixture(scope="module")
def small_stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"OLLAMA_MAX_QUEUE": "2", "OLLAMA_NUM_PARALLEL": "1", "HERD_WORKER_TIMEOUT": "2"}
    with start_stack(models_dir, tmp_path_factory.mktemp("run-small"), env=env) as stack:
        yield stack


def test_max_queue_bounds_waiting_requests_exactly(small_stack: Stack) -> None:
    base = small_stack.settings.base_url
    with (
        httpx.Client(base_url=base, timeout=60) as c,
        c.stream("POST", "/api/generate", json=LONG) as running,
    ):
        lines = running.iter_lines()
        assert next(line for line in lines if line)  # the only slot is now busy
        results: list[httpx.Response] = []

        def send() -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                results.append(client.post("/api/generate", json=SHORT))

        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while sum(r.status_code == 503 for r in results) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = [r for r in results if r.status_code == 503]
        assert len(refused) == 4 and len(results) == 4  # two still wait for the slot
        for r in refused:
            assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
            assert int(r.headers["Retry-After"]) >= 1
    # The long request's client left: its slot frees and both waiting requests complete.
    for t in threads:
        t.join(timeout=60)
    assert sorted(r.status_code for r in results) == [200, 200, 503, 503, 503, 503]
    metrics = httpx.get(f"http://127.0.0.1:{small_stack.settings.metrics_port}/metrics", timeout=10).text
    assert 'herd_requests_rejected_total{reason="queue_full"} 4.0' in metrics


def test_worker_killed_mid_stream_ends_the_stream_with_an_error_and_is_restarted(small_stack: Stack) -> None:
    base = small_stack.settings.base_url
    worker = small_stack.workers[0]
    pid = worker.pid
    assert pid is not None
    with httpx.Client(base_url=base, timeout=60) as c, c.stream("POST", "/api/generate", json=LONG) as r:
        assert r.status_code == 200
        events = (json.loads(line) for line in r.iter_lines() if line)
        assert next(events)["done"] is False
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        last: dict[str, object] = {}
        for event in events:
            last = event
        assert "error" in last and "worker" in str(last["error"])
        assert time.monotonic() - started < 10
    # The supervisor's pass restarts the dead worker (after its back-off), and it serves again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (worker.alive and worker.pid != pid):
        small_stack.check_once()
        time.sleep(0.2)
    assert worker.alive and worker.pid != pid
    with httpx.Client(base_url=base, timeout=60) as c:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if c.get("/health/ready").status_code == 200:
                    break
            time.sleep(0.2)
        out = c.post("/api/generate", json=SHORT)
    assert out.status_code == 200 and out.json()["done"] is True
