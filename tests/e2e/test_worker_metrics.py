"""Each worker's own /metrics: every load, load failure and eviction moves its series with the right labels.

The stacks here run on a hard-linked copy of the session store plus models of their own (a distinct tiny
model per test, so no test depends on what another left loaded, and one whose weights are cut short).
The "worker_shutdown" eviction reason is not tested: it is recorded while the worker exits, and a scrape
can only race the process's end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from herd.names import ModelName
from herd.store import ModelStore
from stack.supervisor import Stack
from tests.e2e.conftest import GEMMA, start_stack
from tests.support.prompts import endless_stream
from tests.support.tiny_gguf import write_tiny_llama

WORKER = "w0"
QUICK = {"temperature": 0, "seed": 1, "num_predict": 4}
# The tiny models each test loads, so every test starts from "not loaded" whatever ran before it.
TINY = ("loads", "unloads", "expires", "first", "second")


def samples(text: str, name: str, **labels: str) -> list[float]:
    """The values of the samples of a text exposition named `name` whose labels include `labels`."""
    return [
        float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample; 0 when no such series exists yet (a counter never moved)."""
    found = samples(text, name, **labels)
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else 0.0


def scrape(url: str) -> str:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return r.text


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def store_root(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session store (Gemma among it, hard-linked, not copied), five tiny models and a broken one."""
    root = tmp_path_factory.mktemp("worker-metrics") / "models"
    shutil.copytree(models_dir, root, copy_function=os.link)
    store = ModelStore(root)
    ggufs = tmp_path_factory.mktemp("worker-metrics-ggufs")
    for seed, name in enumerate(TINY, start=10):
        store.import_gguf(ModelName.parse(name), write_tiny_llama(ggufs / f"{name}.gguf", seed=seed))
    # Its header (and so its metadata and memory estimate) reads; its tensors end half way.
    broken = write_tiny_llama(ggufs / "broken.gguf", seed=9)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    store.import_gguf(ModelName.parse("broken"), broken)
    return root


@pytest.fixture(scope="module")
def metrics_stack(store_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(store_root, tmp_path_factory.mktemp("run-worker-metrics")) as stack:
        yield stack


@pytest.fixture
def client(metrics_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=metrics_stack.url, timeout=120) as c:
        yield c


def generate(client: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    return client.post(
        "/api/generate", json={"model": model, "prompt": "hi", "stream": False, "options": QUICK, **extra}
    )


def test_each_worker_serves_metrics_on_its_own_port(metrics_stack: Stack) -> None:
    (url,) = metrics_stack.worker_metrics_urls
    assert url == f"http://127.0.0.1:{metrics_stack.settings.metrics_port + 1}/metrics"
    families = {f.name: f.type for f in text_string_to_metric_families(scrape(url))}
    assert families["herd_model_loads"] == "counter"
    assert families["herd_model_load_failures"] == "counter"
    assert families["herd_model_evictions"] == "counter"
    assert families["herd_model_load_seconds"] == "histogram"
    assert families["herd_models_loaded"] == families["herd_sequences"] == "gauge"


def test_a_load_counts_once_with_its_model_and_worker(metrics_stack: Stack, client: httpx.Client) -> None:
    (url,) = metrics_stack.worker_metrics_urls
    before = scrape(url)
    assert sample(before, "herd_model_loads_total", model="loads:latest", worker=WORKER) == 0
    for _ in range(2):  # the second request finds the model loaded: no second load
        assert generate(client, "loads").status_code == 200
    after = scrape(url)
    assert sample(after, "herd_model_loads_total", model="loads:latest", worker=WORKER) == 1
    count = "herd_model_load_seconds_count"
    assert sample(after, count, worker=WORKER) == sample(before, count, worker=WORKER) + 1
    assert sample(after, "herd_model_load_seconds_sum", worker=WORKER) > sample(
        before, "herd_model_load_seconds_sum", worker=WORKER
    )
    wait_for(
        lambda: sample(scrape(url), "herd_sequences", worker=WORKER, model="loads:latest", state="free") >= 1,
        "the loaded model's free sequence slots showing",
    )
    assert sample(scrape(url), "herd_models_loaded", worker=WORKER) >= 1


def test_keep_alive_0_evicts_with_reason_requested(metrics_stack: Stack, client: httpx.Client) -> None:
    (url,) = metrics_stack.worker_metrics_urls
    labels = {"model": "unloads:latest", "worker": WORKER}
    assert generate(client, "unloads").status_code == 200
    assert sample(scrape(url), "herd_model_evictions_total", reason="requested", **labels) == 0
    assert generate(client, "unloads", keep_alive=0).status_code == 200
    wait_for(
        lambda: sample(scrape(url), "herd_model_evictions_total", reason="requested", **labels) == 1,
        "the eviction with reason requested",
    )
    text = scrape(url)
    for reason in ("keep_alive_expired", "max_loaded_models", "memory_pressure", "worker_shutdown"):
        assert sample(text, "herd_model_evictions_total", reason=reason, **labels) == 0, reason
    # Unloaded: its sequence series go with it once the worker publishes its state again.
    wait_for(
        lambda: not samples(scrape(url), "herd_sequences", model="unloads:latest"),
        "the unloaded model's herd_sequences series going away",
    )


def test_keep_alive_expiry_evicts_with_reason_keep_alive_expired(
    metrics_stack: Stack, client: httpx.Client
) -> None:
    (url,) = metrics_stack.worker_metrics_urls
    labels = {"model": "expires:latest", "worker": WORKER}
    assert generate(client, "expires", keep_alive="1s").status_code == 200
    wait_for(
        lambda: sample(scrape(url), "herd_model_evictions_total", reason="keep_alive_expired", **labels) == 1,
        "the eviction with reason keep_alive_expired",
    )
    assert sample(scrape(url), "herd_model_evictions_total", reason="requested", **labels) == 0


def test_a_failed_load_counts_as_a_load_failure(metrics_stack: Stack, client: httpx.Client) -> None:
    (url,) = metrics_stack.worker_metrics_urls
    labels = {"model": "broken:latest", "worker": WORKER}
    before = scrape(url)
    assert sample(before, "herd_model_load_failures_total", **labels) == 0
    r = generate(client, "broken")
    assert r.status_code >= 400, r.text
    after = scrape(url)
    assert sample(after, "herd_model_load_failures_total", **labels) == 1
    assert sample(after, "herd_model_loads_total", **labels) == 0


def test_sequences_are_busy_during_a_stream_and_free_after(
    metrics_stack: Stack, client: httpx.Client
) -> None:
    (url,) = metrics_stack.worker_metrics_urls
    gemma = {"worker": WORKER, "model": GEMMA}
    with client.stream("POST", "/api/generate", json=endless_stream(GEMMA)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept: once collected, the dropped iterator would close the stream
        first = next(line for line in lines if line)
        assert json.loads(first)["done"] is False
        wait_for(
            lambda: sample(scrape(url), "herd_sequences", state="busy", **gemma) == 1,
            "one busy sequence of the streaming model",
        )
    # The client left: the worker cancels the sequence at its next decode step and publishes its state.
    wait_for(
        lambda: sample(scrape(url), "herd_sequences", state="busy", **gemma) == 0,
        "the sequence freed after the client left",
    )
    text = scrape(url)
    assert sample(text, "herd_sequences", state="free", **gemma) >= 1


def test_max_loaded_models_evicts_the_older_model_with_that_reason(store_root: Path, tmp_path: Path) -> None:
    with (
        start_stack(store_root, tmp_path / "run", env={"OLLAMA_MAX_LOADED_MODELS": "1"}) as stack,
        httpx.Client(base_url=stack.url, timeout=120) as client,
    ):
        (url,) = stack.worker_metrics_urls
        assert generate(client, "first").status_code == 200
        assert generate(client, "second").status_code == 200
        text = scrape(url)
        evicted = {"model": "first:latest", "worker": WORKER}
        assert sample(text, "herd_model_evictions_total", reason="max_loaded_models", **evicted) == 1
        assert sample(text, "herd_model_loads_total", **evicted) == 1
        assert sample(text, "herd_model_loads_total", model="second:latest", worker=WORKER) == 1
        assert sample(text, "herd_models_loaded", worker=WORKER) == 1
