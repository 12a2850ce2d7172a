"""Prometheus metrics on nginx's internal listener, never on the public one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from stack.supervisor import Stack
from tests.e2e.conftest import start_stack


def scrape(stack: Stack) -> str:
    r = httpx.get(f"http://127.0.0.1:{stack.settings.metrics_port}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def value(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{labels} not in metrics"
    return float(match.group(1))


def test_internal_listener_serves_queue_worker_and_request_metrics(
    client: httpx.Client, stack: Stack
) -> None:
    client.get("/api/tags")
    text = scrape(stack)
    assert value(text, "herd_queue_capacity") == 512
    assert value(text, "herd_queue_waiting") == 0
    assert value(text, "herd_workers_live") == 1
    assert value(text, "herd_slots_total", '{worker="w0"}') >= 1
    before = value(text, "herd_http_requests_total", '{method="GET",route="/api/tags",status="200"}')
    client.get("/api/tags")
    after = value(scrape(stack), "herd_http_requests_total", '{method="GET",route="/api/tags",status="200"}')
    assert after == before + 1


def test_model_names_never_become_label_values(client: httpx.Client, stack: Stack) -> None:
    client.get("/v1/models/someone/handmade:v1")
    assert "handmade" not in scrape(stack)


def test_internal_listener_serves_nothing_else(stack: Stack) -> None:
    r = httpx.get(f"http://127.0.0.1:{stack.settings.metrics_port}/api/tags", timeout=10)
    assert r.status_code == 404


def test_public_listener_hides_metrics(client: httpx.Client) -> None:
    assert client.get("/metrics").status_code == 404


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value, found by name and a subset of its labels; 0 when the series does not exist yet."""
    found = [
        float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else 0.0


TINY = "tiny-a:latest"
QUICK = {"temperature": 0, "seed": 1, "num_predict": 6}


def test_requests_count_by_endpoint_model_and_status(client: httpx.Client, stack: Stack) -> None:
    before = scrape(stack)
    ok = client.post(
        "/api/generate", json={"model": "tiny-a", "prompt": "hi", "stream": False, "options": QUICK}
    )
    assert ok.status_code == 200
    assert client.post("/api/generate", json={"model": "no-such-model", "prompt": "hi"}).status_code == 404
    assert client.post("/api/generate", json={"model": "bad name!", "prompt": "hi"}).status_code == 400
    assert client.post("/api/embed", json={"model": "tiny-a", "input": "hi"}).status_code == 200
    completion = {"model": "tiny-a", "prompt": "hi", "max_tokens": 4, "seed": 1}
    assert client.post("/v1/completions", json=completion).status_code == 200
    v1 = client.post(
        "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert v1.status_code == 404
    after = scrape(stack)

    def moved(**labels: str) -> float:
        return sample(after, "herd_requests_total", **labels) - sample(
            before, "herd_requests_total", **labels
        )

    assert moved(endpoint="/api/generate", model=TINY, status="200") == 1
    # Refused before a job named a stored model: no model label, so client typos never become series.
    assert moved(endpoint="/api/generate", model="", status="404") == 1
    assert moved(endpoint="/api/generate", model="", status="400") == 1
    assert moved(endpoint="/api/embed", model=TINY, status="200") == 1
    assert moved(endpoint="/v1/chat/completions", model="", status="404") == 1
    assert moved(endpoint="/v1/completions", model=TINY, status="200") == 1
    duration = "herd_request_duration_seconds_count"
    for endpoint in ("/api/embed", "/v1/completions"):
        assert sample(after, duration, endpoint=endpoint, model=TINY) > sample(
            before, duration, endpoint=endpoint, model=TINY
        ), endpoint
    assert "no-such-model" not in after and "bad name" not in after


def test_latency_histograms_and_token_counters_follow_each_generation(
    client: httpx.Client, stack: Stack
) -> None:
    before = scrape(stack)
    streamed = client.post("/api/generate", json={"model": "tiny-a", "prompt": "one", "options": QUICK})
    assert streamed.status_code == 200
    final = json.loads(streamed.text.strip().splitlines()[-1])
    whole = client.post(
        "/api/generate", json={"model": "tiny-a", "prompt": "two", "stream": False, "options": QUICK}
    ).json()
    after = scrape(stack)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("herd_time_to_first_token_seconds_count", model=TINY) == 2
    assert moved("herd_request_duration_seconds_count", endpoint="/api/generate", model=TINY) == 2
    assert moved("herd_generation_tokens_per_second_count", model=TINY) == 2
    assert moved("herd_generated_tokens_total", model=TINY) == final["eval_count"] + whole["eval_count"] > 0
    assert (
        moved("herd_prompt_tokens_total", model=TINY)
        == final["prompt_eval_count"] + whole["prompt_eval_count"]
    )
    # Time to the first token is part of the whole request's time.
    assert (
        0
        < moved("herd_time_to_first_token_seconds_sum", model=TINY)
        <= moved("herd_request_duration_seconds_sum", endpoint="/api/generate", model=TINY)
    )


def test_rejections_while_redis_is_down_are_counted_and_metrics_still_answer(
    models_dir: Path, tmp_path: Path
) -> None:
    with start_stack(models_dir, tmp_path / "run") as stack:
        assert stack.redis is not None
        stack.redis.stop()
        r = httpx.post(f"{stack.url}/api/generate", json={"model": "tiny-a", "prompt": "hi"}, timeout=30)
        # HERD_RETRY_AFTER's default (2 s), as the queue-full 503 sends.
        assert r.status_code == 503 and r.headers["Retry-After"] == "2", r.text
        text = scrape(stack)  # answers without Redis: the counters, not gauges it cannot read
        assert sample(text, "herd_requests_rejected_total", reason="redis_unavailable") == 1
        assert sample(text, "herd_requests_total", endpoint="/api/generate", model=TINY, status="503") == 1
        assert "herd_queue_waiting" not in text
        assert sample(text, "herd_queue_capacity") == 512
