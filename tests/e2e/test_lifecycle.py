"""Model residency and request lifecycle through the real stack: keep_alive, reloads, cancellation."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import redis

from herd.contracts import WORKERS_SET, WorkerState, worker_state_key
from tests.e2e.conftest import GEMMA
from tests.support.prompts import endless_stream

GREEDY = {"temperature": 0, "seed": 7}


def worker_states(r: redis.Redis) -> list[WorkerState]:
    states = []
    for worker_id in r.smembers(WORKERS_SET):
        doc = r.get(worker_state_key(worker_id))
        if doc:
            states.append(WorkerState.model_validate_json(doc))
    return states


def loads(r: redis.Redis) -> int:
    return sum(s.loads for s in worker_states(r))


def busy(r: redis.Redis) -> int:
    return sum(s.slots_busy for s in worker_states(r))


def ps(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in client.get("/api/ps").json()["models"]}


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_consecutive_requests_never_reload(client: httpx.Client, redis_client: redis.Redis) -> None:
    body = {"model": GEMMA, "prompt": "Hello", "stream": False, "options": {**GREEDY, "num_predict": 3}}
    client.post("/api/generate", json=body)
    before = loads(redis_client)
    for _ in range(3):
        out = client.post("/api/generate", json=body).json()
        assert out["load_duration"] == 0
    client.post(
        "/api/chat",
        json={
            "model": GEMMA,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": {"num_predict": 2},
        },
    )
    assert loads(redis_client) == before


def test_preload_ps_and_unload(client: httpx.Client, redis_client: redis.Redis) -> None:
    client.post("/api/generate", json={"model": GEMMA, "keep_alive": 0})
    assert wait_for(lambda: GEMMA not in ps(client))
    before = loads(redis_client)
    loaded = client.post("/api/generate", json={"model": GEMMA}).json()
    assert loaded == {**loaded, "done": True, "done_reason": "load", "response": ""}
    assert loads(redis_client) == before + 1
    assert wait_for(lambda: GEMMA in ps(client))
    entry = ps(client)[GEMMA]
    assert entry["context_length"] == 4096 and entry["size"] > 200_000_000
    assert entry["details"]["family"] == "gemma3" and entry["device"] == "cpu"
    expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    assert 200 < (expires - datetime.now(UTC)).total_seconds() <= 301  # OLLAMA_KEEP_ALIVE default 5m
    unloaded = client.post("/api/chat", json={"model": GEMMA, "messages": [], "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload" and unloaded["message"]["content"] == ""
    assert wait_for(lambda: GEMMA not in ps(client))


def test_keep_alive_expiry_pin_and_kept_rule(client: httpx.Client) -> None:
    client.post("/api/generate", json={"model": GEMMA, "keep_alive": "4s"})
    assert GEMMA in ps(client)
    assert wait_for(lambda: GEMMA not in ps(client), timeout=15)
    client.post("/api/generate", json={"model": GEMMA, "keep_alive": -1})
    expires = datetime.fromisoformat(ps(client)[GEMMA]["expires_at"].replace("Z", "+00:00"))
    assert (expires - datetime.now(UTC)).days > 365
    # A request without keep_alive keeps the pinned rule, as Ollama does.
    client.post(
        "/api/generate", json={"model": GEMMA, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    )
    time.sleep(1)
    expires = datetime.fromisoformat(ps(client)[GEMMA]["expires_at"].replace("Z", "+00:00"))
    assert (expires - datetime.now(UTC)).days > 365
    client.post("/api/generate", json={"model": GEMMA, "keep_alive": "5m"})


def test_keep_alive_zero_unloads_after_the_response(client: httpx.Client) -> None:
    out = client.post(
        "/api/generate",
        json={
            "model": GEMMA,
            "prompt": "Hi",
            "keep_alive": 0,
            "stream": False,
            "options": {"num_predict": 2},
        },
    ).json()
    assert out["done"] is True and out["eval_count"] > 0
    assert wait_for(lambda: GEMMA not in ps(client))


def test_disconnect_mid_stream_frees_the_slot(base_url: str, redis_client: redis.Redis) -> None:
    body = endless_stream(GEMMA)
    with httpx.Client(base_url=base_url, timeout=60) as c, c.stream("POST", "/api/generate", json=body) as r:
        received = 0
        lines = r.iter_lines()  # kept: once collected, the dropped iterator would close the stream
        for line in lines:
            if line:
                assert json.loads(line)["done"] is False
                received += 1
            if received == 3:
                break
        assert busy(redis_client) == 1
    # The connection is closed: the worker must stop this sequence at its next decode step.
    assert wait_for(lambda: busy(redis_client) == 0, timeout=3)


def test_disconnect_mid_sse_stream_on_v1_frees_the_slot(base_url: str, redis_client: redis.Redis) -> None:
    native = endless_stream(GEMMA)
    body = {"model": GEMMA, "prompt": native["prompt"], "max_tokens": 3000, "temperature": 0, "stream": True}
    with (
        httpx.Client(base_url=base_url, timeout=60) as c,
        c.stream("POST", "/v1/completions", json=body) as r,
    ):
        assert r.status_code == 200
        received = 0
        lines = r.iter_lines()  # kept, as above
        for line in lines:
            if line.startswith("data: "):
                assert json.loads(line.removeprefix("data: "))["choices"][0]["finish_reason"] is None
                received += 1
            if received == 3:
                break
        assert busy(redis_client) == 1
    assert wait_for(lambda: busy(redis_client) == 0, timeout=3)


def test_a_client_that_stops_waiting_for_a_non_streamed_answer_frees_the_slot(
    base_url: str, redis_client: redis.Redis
) -> None:
    # Nothing is written to a non-streamed client until the end, so only asking the connection (every
    # 0.5 s while tokens flow) can tell that it left; the story would otherwise run 3000 tokens.
    body = {**endless_stream(GEMMA), "stream": False}
    with (
        httpx.Client(base_url=base_url, timeout=2.0) as impatient,
        contextlib.suppress(httpx.ReadTimeout),
    ):
        impatient.post("/api/generate", json=body)
        raise AssertionError("the endless story was answered within 2 s")
    assert wait_for(lambda: busy(redis_client) == 0, timeout=3)


def test_disconnect_while_queued_never_reaches_the_worker(base_url: str, redis_client: redis.Redis) -> None:
    long_body = endless_stream(GEMMA)
    # The generation worker's RQ record (the store worker is registered there too). Its job function
    # returns once the sequence is submitted, so each job that reaches it counts one success.
    rq_worker = "rq:worker:w0"
    assert rq_worker in redis_client.smembers("rq:workers")
    done_before = int(redis_client.hget(rq_worker, "successful_job_count") or 0)
    with (
        httpx.Client(base_url=base_url, timeout=60) as c,
        c.stream("POST", "/api/generate", json=long_body) as first,
    ):
        # Keep the iterator: dropping it would close the first stream and free the slot.
        first_lines = first.iter_lines()
        assert next(line for line in first_lines if line)
        # The only slot is busy: this one waits in the queue, then its client gives up.
        with (
            httpx.Client(base_url=base_url, timeout=1.0) as impatient,
            contextlib.suppress(httpx.ReadTimeout),
        ):
            impatient.post("/api/generate", json={**long_body, "stream": False})
        assert wait_for(
            lambda: sum(redis_client.llen(k) for k in redis_client.smembers("herd:queue-keys")) == 0
        )
        assert busy(redis_client) == 1  # still the first request, which kept its slot
    assert wait_for(lambda: busy(redis_client) == 0, timeout=3)
    time.sleep(0.5)  # time enough for a withdrawn job that reached the worker after all to be counted
    done_after = int(redis_client.hget(rq_worker, "successful_job_count") or 0)
    assert done_after == done_before + 1
