"""Redis restarted mid-traffic: fast 503s during the outage, then service resumes with no Herd restart.

The stack's redis-server is stopped (SIGTERM: it writes its append-only file) and started again on the
same port, config and data directory, while one job is generating and another waits behind it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.stack.supervisor import Stack
from tests.e2e.conftest import GEMMA, start_stack

LONG = {
    "model": GEMMA,
    "prompt": "Tell me a very long story.",
    "options": {"temperature": 0, "num_predict": 200},
}
QUEUED = {"model": GEMMA, "prompt": "Hi", "stream": False, "options": {"temperature": 0, "num_predict": 4}}
TINY = {"model": "tiny-a", "prompt": "hi", "stream": False, "options": {"temperature": 0, "num_predict": 4}}
OUTAGE_S = 3.0


@pytest.fixture
def restart_stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"OLLAMA_MAX_QUEUE": "16", "OLLAMA_NUM_PARALLEL": "1", "HERD_WORKER_TIMEOUT": "3"}
    with start_stack(models_dir, tmp_path_factory.mktemp("run-redis"), env=env) as stack:
        yield stack


def _pids(stack: Stack) -> dict[str, int | None]:
    procs = [stack.api, stack.nginx, stack.store_worker, *stack.workers]
    return {p.name: p.pid for p in procs if p is not None}


def test_redis_restart_fails_fast_during_the_outage_and_service_resumes_by_itself(
    restart_stack: Stack,
) -> None:
    stack = restart_stack
    base = stack.settings.base_url
    assert stack.redis is not None
    pids = _pids(stack)
    with redis.Redis.from_url(stack.settings.stack_redis_url, decode_responses=True) as r:
        # What lets the waiting job survive the restart: the stack's Redis logs every write.
        assert r.config_get("appendonly") == {"appendonly": "yes"}
    with httpx.Client(base_url=base, timeout=60) as c:
        assert c.post("/api/generate", json=TINY).status_code == 200

    # A job generating and one waiting behind it (one slot) when Redis goes away.
    long_lines: list[dict[str, Any]] = []
    long_failure: list[BaseException] = []
    queued: list[httpx.Response] = []
    first_token = threading.Event()

    def run_long() -> None:
        try:
            with (
                httpx.Client(base_url=base, timeout=120) as c,
                c.stream("POST", "/api/generate", json=LONG) as r,
            ):
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line:
                        long_lines.append(json.loads(line))
                        first_token.set()
        except (httpx.HTTPError, AssertionError) as exc:  # a cut-off stream is what the test must not see
            long_failure.append(exc)
            first_token.set()

    def run_queued() -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            queued.append(
                c.post("/api/generate", json=QUEUED, headers={"X-Request-ID": f"q-{uuid.uuid4().hex}"})
            )

    long_thread = threading.Thread(target=run_long)
    long_thread.start()
    assert first_token.wait(60)
    queued_thread = threading.Thread(target=run_queued)
    queued_thread.start()
    r = redis.Redis.from_url(stack.settings.stack_redis_url, decode_responses=True)
    deadline = time.monotonic() + 20
    while sum(int(r.llen(k)) for k in r.smembers("herd:queue-keys")) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    r.close()

    stack.redis.stop(10)
    down_at = time.monotonic()
    outage: list[tuple[str, int, float, httpx.Response]] = []
    with httpx.Client(base_url=base, timeout=30) as c:
        while time.monotonic() - down_at < OUTAGE_S:
            for method, path, body in (("POST", "/api/generate", TINY), ("GET", "/api/ps", None)):
                t0 = time.monotonic()
                resp = c.request(method, path, json=body)
                outage.append((path, resp.status_code, time.monotonic() - t0, resp))
            time.sleep(0.1)
    stack.redis.start()
    up_at = time.monotonic()

    # Service resumes with no Herd process restarted: poll until a generation succeeds again.
    resumed_after = None
    with httpx.Client(base_url=base, timeout=60) as c:
        while time.monotonic() - up_at < 30:
            if c.post("/api/generate", json=TINY).status_code == 200:
                resumed_after = time.monotonic() - up_at
                break
            time.sleep(0.2)
    long_thread.join(timeout=120)
    queued_thread.join(timeout=120)

    worst = max(t for _, _, t, _ in outage)
    print(
        f"\nredis restart: {len(outage)} requests during a {OUTAGE_S:.0f}s outage, statuses "
        f"{sorted({s for _, s, _, _ in outage})}, slowest {worst * 1000:.0f} ms; service back "
        f"{resumed_after}s after Redis; running job ended with {long_lines[-1] if long_lines else long_failure}; "
        f"queued job: {queued[0].status_code if queued else None} {queued[0].text[:200] if queued else ''}"
    )
    for _path, status, _t, resp in outage:
        assert status == 503 and "error" in resp.json() and int(resp.headers["Retry-After"]) >= 1
    assert worst < 1.0
    assert resumed_after is not None
    assert _pids(stack) == pids and all(p.alive for p in [stack.api, stack.nginx, *stack.workers] if p)
    assert all(w.restarts == 0 for w in stack.workers)
    # Jobs admitted before the restart finish or fail clearly: never a cut-off stream or a hang.
    assert not long_failure, long_failure
    assert long_lines[-1].get("done") is True or "error" in long_lines[-1]
    assert queued and (queued[0].status_code == 200 or "error" in queued[0].json())
