"""The API's Prometheus metrics: request and rejection counters, and the queue and workers at scrape time.

Under gunicorn the counters live in PROMETHEUS_MULTIPROC_DIR (set by the stack) so that one scrape sums
every API process; the queue and worker gauges are read from Redis when scraped, so they are exact.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:  # services imports admission, which counts rejections here
    from app.services import Services

REQUESTS = Counter(
    "herd_http_requests_total", "HTTP requests answered by the API.", ["method", "route", "status"]
)
REJECTIONS = Counter("herd_queue_rejections_total", "Requests refused with 503 because the queue was full.")


def _route(path: str) -> str:
    # A bounded label set: model names and other path parameters never become label values.
    for prefix in ("/api/", "/v1/models/", "/v1/", "/health/"):
        if path.startswith(prefix):
            return path if prefix != "/v1/models/" else "/v1/models/{model}"
    return "/" if path == "/" else "other"


def observe_request(method: str, path: str, status: int) -> None:
    """Count one answered request."""
    REQUESTS.labels(method=method, route=_route(path), status=str(status)).inc()


async def render(services: Services) -> bytes:
    """The text exposition: the counters of every API process, then the live queue and worker gauges."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        counters = CollectorRegistry()
        MultiProcessCollector(counters)
    else:
        from prometheus_client import REGISTRY as counters  # a single process: its own registry
    live = CollectorRegistry()
    waiting = Gauge("herd_queue_waiting", "Jobs admitted and not yet started by a worker.", registry=live)
    capacity = Gauge("herd_queue_capacity", "OLLAMA_MAX_QUEUE: most jobs that may wait.", registry=live)
    workers = Gauge("herd_workers_live", "Workers whose heartbeat is current.", registry=live)
    loaded = Gauge(
        "herd_models_loaded", "Models held in memory, per worker.", ["worker", "device"], registry=live
    )
    busy = Gauge("herd_slots_busy", "Sequence slots decoding, per worker.", ["worker"], registry=live)
    total = Gauge("herd_slots_total", "Sequence slots, per worker.", ["worker"], registry=live)
    waiting.set(await services.admission.waiting())
    capacity.set(services.admission.max_queue)
    states = await services.workers.states()
    workers.set(len(states))
    for state in states:
        loaded.labels(worker=state.worker_id, device=state.device).set(len(state.models))
        busy.labels(worker=state.worker_id).set(state.slots_busy)
        total.labels(worker=state.worker_id).set(state.slots_total)
    return generate_latest(counters) + generate_latest(live)
