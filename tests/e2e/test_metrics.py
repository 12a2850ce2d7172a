"""Prometheus metrics on nginx's internal listener, never on the public one."""

from __future__ import annotations

import re

import httpx

from app.stack.supervisor import Stack


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
