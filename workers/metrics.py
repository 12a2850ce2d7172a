"""A worker's Prometheus metrics: model loads, load failures, evictions (with their reason), residency.

Each worker process serves its own registry on HERD_WORKER_METRICS_PORT, so these series carry the
`worker` label of the process that moved them. The model cache calls the `record_*` functions at the
moment a load or an eviction happens; gauges are set whenever the cache's contents change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

EvictionReason = Literal[
    "keep_alive_expired", "memory_pressure", "max_loaded_models", "requested", "worker_shutdown"
]

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

MODEL_LOADS = Counter(
    "herd_model_loads_total", "Models loaded into memory.", ["model", "worker"], registry=REGISTRY
)
MODEL_LOAD_SECONDS = Histogram(
    "herd_model_load_seconds",
    "Time to load a model (weights and context).",
    ["worker"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
    registry=REGISTRY,
)
MODEL_LOAD_FAILURES = Counter(
    "herd_model_load_failures_total", "Model loads that failed.", ["model", "worker"], registry=REGISTRY
)
MODEL_EVICTIONS = Counter(
    "herd_model_evictions_total",
    "Models unloaded, by reason.",
    ["model", "worker", "reason"],
    registry=REGISTRY,
)
MODELS_LOADED = Gauge("herd_models_loaded", "Models held in memory.", ["worker"], registry=REGISTRY)
SEQUENCES = Gauge(
    "herd_sequences",
    "Sequence slots of each loaded model, busy or free.",
    ["worker", "model", "state"],
    registry=REGISTRY,
)


class WorkerMetrics:
    """The metrics of one worker process, labelled with its id."""

    def __init__(self, worker_id: str):
        self.worker = worker_id
        MODELS_LOADED.labels(worker=worker_id).set(0)

    def record_load(self, model: str, seconds: float) -> None:
        MODEL_LOADS.labels(model=model, worker=self.worker).inc()
        MODEL_LOAD_SECONDS.labels(worker=self.worker).observe(seconds)

    def record_load_failure(self, model: str) -> None:
        MODEL_LOAD_FAILURES.labels(model=model, worker=self.worker).inc()

    def record_eviction(self, model: str, reason: EvictionReason) -> None:
        MODEL_EVICTIONS.labels(model=model, worker=self.worker, reason=reason).inc()

    def set_residency(self, sequences: dict[str, tuple[int, int]]) -> None:
        """The loaded models now, each with (busy, total) sequence slots."""
        MODELS_LOADED.labels(worker=self.worker).set(len(sequences))
        for labels in list(SEQUENCES._metrics):  # drop models no longer loaded
            if labels[0] == self.worker and labels[1] not in sequences:
                SEQUENCES.remove(*labels)
        for model, (busy, total) in sequences.items():
            SEQUENCES.labels(worker=self.worker, model=model, state="busy").set(busy)
            SEQUENCES.labels(worker=self.worker, model=model, state="free").set(total - busy)


class MetricsPortUnavailable(SystemExit):
    """HERD_WORKER_METRICS_HOST:HERD_WORKER_METRICS_PORT cannot be bound."""


def serve(host: str, port: int) -> Callable[[], None]:
    """Serve REGISTRY at http://host:port/metrics from a daemon thread; returns the function that stops it.

    Port 0 serves nothing (the stop function then does nothing). A port that cannot be bound stops the
    worker at start, naming the variable: a worker Prometheus cannot scrape is an outage nobody sees.
    """
    if port == 0:
        return lambda: None
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise MetricsPortUnavailable(
            f"herd: cannot serve worker metrics on {host}:{port} (HERD_WORKER_METRICS_HOST, "
            f"HERD_WORKER_METRICS_PORT): {exc.strerror or exc}; free the port or set another"
        ) from exc
    log.info("serving metrics", extra={"address": f"{host}:{port}"})

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
