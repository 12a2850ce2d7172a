"""Every metric the dashboard and the alert rules query is one a running stack really exports.

A real stack (tests/e2e/conftest.py's start_stack: redis-server, gunicorn, a worker, nginx) serves a
generation, a model that fails to load, an unload, and a rejection; then the API's metrics are scraped through
nginx's internal listener and the worker's on its own port (HERD_METRICS_PORT + 1 + its index), and every name
the queries use must be among the families scraped.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from herd.names import ModelName
from herd.store import ModelStore
from tests.deploy.bundle import alert_rules, dashboard_queries, metric_family, metric_names
from tests.e2e.conftest import start_stack
from tests.support.tiny_gguf import write_tiny_llama

# Not Herd's: `up` is Prometheus's own per target; redis_* come from redis_exporter (compose.yaml's
# redis-exporter service, oliver006/redis_exporter), which does not run in this test.
NOT_HERDS = re.compile(r"^(up|redis_\w+)$")


def _families(exposition: str) -> set[str]:
    """Metric family names of a text exposition: declared (# TYPE) and sampled (histogram suffixes mapped)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            names.update({name, f"{name}_total"})  # a counter's family may be declared without _total
        elif line and not line.startswith("#"):
            sample = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            if sample:
                names.update({sample[0], metric_family(sample[0])})
    return names


def _queried() -> dict[str, list[str]]:
    """Each metric family the dashboards and rules query, with where it is used."""
    used: dict[str, list[str]] = {}
    for query in dashboard_queries():
        for name in metric_names(query):
            used.setdefault(metric_family(name), []).append(f"dashboard: {query}")
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(metric_family(name), []).append(f"alert {rule['alert']}")
    return used


def _open_request(base_url: str, body: dict[str, object]) -> socket.socket:
    """A request sent on a raw socket and left open: it waits in the queue until the caller closes it.

    Closing it is the client leaving, so the API withdraws the job and the stack's stop (nginx's graceful
    one) has no open request to wait for.
    """
    url = httpx.URL(base_url)
    payload = json.dumps(body).encode()
    sock = socket.create_connection((url.host, url.port or 80), timeout=10)
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


@pytest.mark.slow
def test_queried_metrics_exist_in_a_live_scrape(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", seed=1)
    store.import_gguf(ModelName.parse("tiny:latest"), tiny)
    # A model whose weights are cut short: its metadata reads, its load fails in the worker.
    broken = write_tiny_llama(tmp_path / "broken.gguf", seed=2)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    store.import_gguf(ModelName.parse("broken:latest"), broken)

    problems: list[str] = []
    scraped: set[str] = set()
    with start_stack(store.root, tmp_path / "run", env={"OLLAMA_MAX_QUEUE": "1"}) as stack:
        metrics_port = stack.settings.metrics_port
        with httpx.Client(base_url=stack.url, timeout=60) as client:
            body = {
                "model": "tiny",
                "prompt": "hello",
                "stream": False,
                "options": {"num_predict": 8, "seed": 1},
            }
            assert client.post("/api/generate", json=body).status_code == 200
            # keep_alive 0: the model is unloaded right after (an eviction, reason "requested").
            assert client.post("/api/generate", json={**body, "keep_alive": 0}).status_code == 200
            assert client.post("/api/generate", json={**body, "model": "broken"}).status_code >= 400
            with httpx.Client(timeout=10) as scraper:
                for index in range(len(stack.workers)):
                    url = f"http://127.0.0.1:{metrics_port + 1 + index}/metrics"
                    try:
                        response = scraper.get(url)
                        response.raise_for_status()
                        scraped |= _families(response.text)
                    except httpx.HTTPError as exc:
                        problems.append(f"worker {index} metrics at {url}: {exc!r}")

            # With no worker left a first request waits (its client stays connected, or the API would withdraw
            # it) and, OLLAMA_MAX_QUEUE being 1, the next is refused.
            for worker in stack.workers:
                worker.stop(15.0)
            with contextlib.closing(_open_request(stack.url, body)):
                deadline = time.monotonic() + 20
                while (
                    "herd_queue_waiting 1.0" not in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
                ):
                    assert time.monotonic() < deadline, (
                        "the waiting request never showed in herd_queue_waiting"
                    )
                    time.sleep(0.2)
                assert client.post("/api/generate", json=body, timeout=10).status_code == 503
                api = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
                api.raise_for_status()
                scraped |= _families(api.text)

    missing = {
        name: where for name, where in _queried().items() if not NOT_HERDS.match(name) and name not in scraped
    }
    for name, where in sorted(missing.items()):
        problems.append(f"{name} is not exported (used by {where[0]}{' and more' if len(where) > 1 else ''})")
    assert not problems, "\n".join(problems)


def test_the_name_extraction_finds_every_kind_of_reference() -> None:
    """Guards the test above: the PromQL parser sees selectors inside functions, by-clauses and matchers."""
    expr = 'histogram_quantile(0.95, sum by (le, worker) (rate(a_seconds_bucket{job="x"}[5m]))) / on (worker) b_total > 3 or up{job="y"} == 0'
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "up"}
    assert metric_family("a_seconds_bucket") == "a_seconds"
    assert _families('# TYPE c counter\nc_total 1\nh_bucket{le="1"} 2\n') >= {"c", "c_total", "h"}
