"""The API's Prometheus counters and histograms: requests, rejections, latency and tokens.

Under gunicorn they live in PROMETHEUS_MULTIPROC_DIR (set by the stack) so that one scrape sums every API
process; app/scrape.py renders them with the queue and worker gauges, read from Redis when scraped, so
they are exact. Model loads, evictions and residency are the workers' own metrics (workers/metrics.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.types import Scope

from herd.names import InvalidModelName, ModelName

log = logging.getLogger(__name__)

RejectionReason = Literal["queue_full", "redis_unavailable"]

# The routes that run a model; herd_requests_total counts these only, so `endpoint` stays a short list.
INFERENCE_ENDPOINTS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }
)
# Where a route leaves the model's display name for the request counter (scope["state"], request.state).
_MODEL_STATE = "metrics_model"
# Wide enough for a 270M model on a CPU (milliseconds) and a 70B model loading from disk (minutes).
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_SPEED_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10000)

REQUESTS = Counter(
    "herd_http_requests_total", "HTTP requests answered by the API.", ["method", "route", "status"]
)
INFERENCE_REQUESTS = Counter(
    "herd_requests_total",
    "Generation and embedding requests answered, by route, model (empty before a job was made) and status.",
    ["endpoint", "model", "status"],
)
REJECTED = Counter(
    "herd_requests_rejected_total", "Requests refused with 503 before reaching a worker.", ["reason"]
)
FIRST_TOKEN_SECONDS = Histogram(
    "herd_time_to_first_token_seconds",
    "From admission to the first generated token reaching the API (queueing, loading and prefill).",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
REQUEST_SECONDS = Histogram(
    "herd_request_duration_seconds",
    "From admission to the request's last event (done or error).",
    ["endpoint", "model"],
    buckets=_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("herd_prompt_tokens_total", "Prompt tokens evaluated.", ["model"])
GENERATED_TOKENS = Counter("herd_generated_tokens_total", "Tokens generated.", ["model"])
TOKENS_PER_SECOND = Histogram(
    "herd_generation_tokens_per_second",
    "Decoding speed of each finished generation (eval_count / eval_duration).",
    ["model"],
    buckets=_SPEED_BUCKETS,
)


def _route(path: str) -> str:
    # A bounded label set: model names and other path parameters never become label values.
    for prefix in ("/api/", "/v1/models/", "/v1/", "/health/"):
        if path.startswith(prefix):
            return path if prefix != "/v1/models/" else "/v1/models/{model}"
    return "/" if path == "/" else "other"


def model_label(canonical: str) -> str:
    """The display name (`tiny:latest`) of a job's canonical model name, as every model label shows it."""
    try:
        return ModelName.parse(canonical).display
    except InvalidModelName:  # a job only ever names a stored model; keep the label set bounded anyway
        return ""


def note_model(request: Request, canonical: str) -> None:
    """Label this request's herd_requests_total sample with its model, now that a job names it."""
    setattr(request.state, _MODEL_STATE, model_label(canonical))


def observe_request(scope: Scope, status: int) -> None:
    """Count one answered request (called once per request, with its final status)."""
    path: str = scope["path"]
    REQUESTS.labels(method=scope["method"], route=_route(path), status=str(status)).inc()
    if path in INFERENCE_ENDPOINTS:
        model = str(scope.get("state", {}).get(_MODEL_STATE, ""))
        # 0: an exception escaped every handler, and Starlette's outermost middleware answers 500.
        INFERENCE_REQUESTS.labels(endpoint=path, model=model, status=str(status or 500)).inc()


def count_rejection(reason: RejectionReason) -> None:
    """Count one request refused with 503 before any worker saw it."""
    REJECTED.labels(reason=reason).inc()


def _seconds_since(admitted_ns: int) -> float:
    return max(time.time_ns() - admitted_ns, 0) / 1e9


def observe_first_token(model: str, admitted_ns: int) -> None:
    """The first token (or tool call) of a generation reached the API."""
    FIRST_TOKEN_SECONDS.labels(model=model).observe(_seconds_since(admitted_ns))


def observe_end(endpoint: str, model: str, admitted_ns: int, event: dict[str, Any]) -> None:
    """A request's terminal event: its duration, and for one that finished, its tokens and speed."""
    REQUEST_SECONDS.labels(endpoint=endpoint, model=model).observe(_seconds_since(admitted_ns))
    if event.get("type") not in ("done", "embedding"):
        return
    PROMPT_TOKENS.labels(model=model).inc(int(event.get("prompt_eval_count") or 0))
    generated = int(event.get("eval_count") or 0)
    GENERATED_TOKENS.labels(model=model).inc(generated)
    eval_ns = int(event.get("eval_duration") or 0)
    if generated > 0 and eval_ns > 0:
        TOKENS_PER_SECOND.labels(model=model).observe(generated / (eval_ns / 1e9))
