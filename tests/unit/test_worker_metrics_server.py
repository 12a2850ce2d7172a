"""A worker's /metrics server: what it serves, its settings, and a port it cannot have."""

from __future__ import annotations

import socket

import httpx
import pytest

from herd.settings import SettingsError, load_settings
from tests.support.ports import free_port
from workers import metrics
from workers.settings import WorkerSettings


def test_serves_the_worker_registry_until_stopped() -> None:
    port = free_port()
    stop = metrics.serve("127.0.0.1", port)
    try:
        worker = metrics.WorkerMetrics("unit-w")
        worker.record_load("tiny:latest", 0.2)
        worker.record_eviction("tiny:latest", "requested")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'herd_model_loads_total{model="tiny:latest",worker="unit-w"} 1.0' in text
        assert (
            'herd_model_evictions_total{model="tiny:latest",reason="requested",worker="unit-w"} 1.0' in text
        )
        assert 'herd_model_load_seconds_count{worker="unit-w"} 1.0' in text
    finally:
        stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_a_taken_port_stops_the_worker_naming_the_variables() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(metrics.MetricsPortUnavailable) as info:
            metrics.serve("127.0.0.1", port)
    message = str(info.value.code)
    assert f"127.0.0.1:{port}" in message and "HERD_WORKER_METRICS_PORT" in message


def test_port_0_serves_nothing() -> None:
    metrics.serve("127.0.0.1", 0)()  # returns a stop function that has nothing to stop


def test_settings_defaults_and_a_bad_port(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HERD_WORKER_METRICS_HOST", "HERD_WORKER_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(WorkerSettings)
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9400)
    monkeypatch.setenv("HERD_WORKER_METRICS_PORT", "70000")
    with pytest.raises(SettingsError) as info:
        load_settings(WorkerSettings)
    assert "HERD_WORKER_METRICS_PORT" in str(info.value.code) and "'70000'" in str(info.value.code)
