"""Scheduling across workers and models: placement, eviction order, memory budgets, FIFO waiting,
per-model parallelism. Each test starts its own stack with the settings it needs (tiny models only)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from herd.contracts import WorkerState, worker_state_key
from herd.memory import estimate
from herd.names import ModelName
from herd.store import ModelStore
from stack.supervisor import Stack
from tests.e2e.conftest import start_stack
from tests.support.prompts import OPENINGS

QUICK = {"temperature": 0, "num_predict": 1}


def _ps(client: httpx.Client) -> dict[str, str]:
    """Loaded model name → the worker holding it."""
    return {m["name"]: m["worker"] for m in client.get("/api/ps").json()["models"]}


def _generate(client: httpx.Client, model: str, **extra: Any) -> dict[str, Any]:
    r = client.post(
        "/api/generate", json={"model": model, "prompt": "hi", "stream": False, "options": QUICK, **extra}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _worker_states(stack: Stack) -> list[WorkerState]:
    r = redis.Redis.from_url(stack.settings.stack_redis_url, decode_responses=True)
    try:
        ids = sorted(r.smembers("herd:workers"))
        docs = [r.get(worker_state_key(i)) for i in ids]
        return [WorkerState.model_validate_json(d) for d in docs if d]
    finally:
        r.close()


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


@pytest.fixture
def make_stack(models_dir: Path, tmp_path: Path) -> Iterator[Any]:
    """Start a stack with the given worker env and stack overrides; stopped at the end of the test."""
    stacks: list[Any] = []

    def make(env: dict[str, str], **overrides: object) -> tuple[Stack, httpx.Client]:
        cm = start_stack(models_dir, tmp_path / f"run{len(stacks)}", env=env, **overrides)
        stack = cm.__enter__()
        stacks.append(cm)
        client = httpx.Client(base_url=stack.settings.base_url, timeout=120)
        return stack, client

    yield make
    for cm in reversed(stacks):
        cm.__exit__(None, None, None)


def test_a_second_model_loads_on_the_idle_worker_instead_of_evicting(make_stack: Any) -> None:
    stack, client = make_stack({"OLLAMA_MAX_LOADED_MODELS": "1"}, HERD_WORKERS=2)
    _wait_for(lambda: len(_worker_states(stack)) == 2)
    _generate(client, "tiny-a")
    first = _ps(client)["tiny-a:latest"]
    _generate(client, "tiny-chat")
    placed = _ps(client)
    assert placed["tiny-a:latest"] == first, "tiny-a was evicted"
    assert placed["tiny-chat:latest"] != first, "the cold model went to the busy worker"
    # Requests for held models go to their holders: nothing loads again.
    for _ in range(3):
        _generate(client, "tiny-a")
        _generate(client, "tiny-chat")
    assert sum(s.loads for s in _worker_states(stack)) == 2


def test_eviction_order_shortest_keep_alive_then_least_recently_used(make_stack: Any) -> None:
    _, client = make_stack({"OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_NUM_PARALLEL": "1"})
    _generate(client, "tiny-a", keep_alive="10m")
    _generate(client, "tiny-chat", keep_alive="5m")
    _generate(client, "tiny-tools", keep_alive="5m")  # evicts tiny-chat: the shorter keep_alive
    assert set(_ps(client)) == {"tiny-a:latest", "tiny-tools:latest"}
    _generate(client, "tiny-chat", keep_alive="10m")  # evicts tiny-tools (5m) though tiny-a is older
    assert set(_ps(client)) == {"tiny-a:latest", "tiny-chat:latest"}
    _generate(client, "tiny-tools", keep_alive="10m")  # equal keep_alives: the least recently used goes
    assert set(_ps(client)) == {"tiny-chat:latest", "tiny-tools:latest"}


def _tiny_need(models_dir: Path, name: str) -> int:
    stored = ModelStore(models_dir).get(ModelName.parse(name))
    return estimate(stored.gguf_info(), stored.model_path, n_ctx=4096, n_parallel=1).total


def test_memory_pressure_evicts_idle_models_but_never_pinned_ones(make_stack: Any, models_dir: Path) -> None:
    # Room for one tiny model and a half: a second one only fits once the first is gone.
    limit = int(_tiny_need(models_dir, "tiny-a") * 1.5)
    _, client = make_stack({"HERD_MEMORY_LIMIT": str(limit), "OLLAMA_NUM_PARALLEL": "1"})
    _generate(client, "tiny-a")
    _generate(client, "tiny-chat")
    assert set(_ps(client)) == {"tiny-chat:latest"}
    # Pinned, tiny-chat may not be evicted for memory: a third model can never fit now, and says so at once.
    _generate(client, "tiny-chat", keep_alive=-1)
    started = time.monotonic()
    r = client.post("/api/generate", json={"model": "tiny-a", "prompt": "hi", "stream": False})
    assert time.monotonic() - started < 10
    assert r.status_code == 500
    assert "requires more memory" in r.json()["error"] and "pinned" in r.json()["error"]
    assert set(_ps(client)) == {"tiny-chat:latest"}


def test_a_model_that_can_never_fit_is_refused_at_once(make_stack: Any) -> None:
    _, client = make_stack({"HERD_MEMORY_LIMIT": "1MiB"})
    r = client.post("/api/generate", json={"model": "tiny-a", "prompt": "hi", "stream": False})
    assert r.status_code == 500
    error = r.json()["error"]
    assert "model requires more memory" in error and "than is available (0.0 GiB)" in error


def test_requests_wait_in_order_until_the_busy_model_is_done(make_stack: Any) -> None:
    _, client = make_stack({"OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_NUM_PARALLEL": "3"})
    _generate(client, "tiny-a")
    finished: list[str] = []
    long_started = threading.Event()

    def long_stream() -> None:
        with client.stream(
            "POST",
            "/api/generate",
            json={"model": "tiny-a", "prompt": "go", "options": {"temperature": 0, "num_predict": 400}},
        ) as r:
            for line in r.iter_lines():
                long_started.set()
                if json.loads(line).get("done"):
                    finished.append("tiny-a")

    def short(model: str) -> None:
        _generate(client, model)
        finished.append(model)

    threads = [threading.Thread(target=long_stream)]
    threads[0].start()
    assert long_started.wait(30)
    for model in ("tiny-chat", "tiny-tools"):
        t = threading.Thread(target=short, args=(model,))
        t.start()
        threads.append(t)
        time.sleep(0.5)  # admission order: tiny-chat, then tiny-tools
    for t in threads:
        t.join(120)
    # Neither cold model could evict tiny-a while it was generating; they ran after it, in order.
    assert finished == ["tiny-a", "tiny-chat", "tiny-tools"]


def test_num_parallel_default_and_per_model(make_stack: Any) -> None:
    stack, client = make_stack({})
    _generate(client, "tiny-a")  # OLLAMA_NUM_PARALLEL unset: 4 sequences when they fit
    _generate(client, "tiny-chat", options={**QUICK, "num_parallel": 2})

    def parallel() -> dict[str, int]:
        return {m.name: m.num_parallel for s in _worker_states(stack) for m in s.models}

    _wait_for(lambda: parallel() == {"tiny-a:latest": 4, "tiny-chat:latest": 2})


PROMPTS = OPENINGS


def test_greedy_output_is_the_same_alone_and_beside_seven_others(make_stack: Any) -> None:
    # The deterministic mode (the default decodes every stream in one batch, where a near-tie can flip).
    stack, client = make_stack({"OLLAMA_NUM_PARALLEL": "8", "HERD_BATCH_INVARIANT": "true"})
    options = {"temperature": 0, "num_predict": 32, "seed": 7}

    def ask(prompt: str) -> str:
        r = client.post(
            "/api/generate",
            json={"model": "gemma3:270m", "prompt": prompt, "raw": True, "stream": False, "options": options},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["response"])

    alone = [ask(p) for p in PROMPTS]
    together: list[str] = [""] * len(PROMPTS)
    busy_seen = 0

    def watch() -> None:
        nonlocal busy_seen
        while any(t.is_alive() for t in threads):
            busy_seen = max(busy_seen, sum(s.slots_busy for s in _worker_states(stack)))
            time.sleep(0.05)

    def run(i: int) -> None:
        together[i] = ask(PROMPTS[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    for t in threads:
        t.join(300)
    watcher.join(10)
    assert busy_seen >= 6, f"the requests did not run together (at most {busy_seen} at once)"
    assert together == alone
