"""The API's /metrics answer: every API process's counters, then the queue and worker gauges read live.

Apart from app/metrics.py, which holds the counters themselves: admission counts rejections there, and
this module reads admission and the worker directory through the process's services.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.services import Services

log = logging.getLogger(__name__)


async def _live_families(services: Services) -> list[GaugeMetricFamily]:
    """The queue and worker gauges, read from Redis now; only the capacity when Redis cannot be read."""
    # Metric families, not Gauge objects: under PROMETHEUS_MULTIPROC_DIR a Gauge writes its value to
    # this process's files, where the next scrape would find it again, labelled with a pid.
    capacity = GaugeMetricFamily(
        "herd_queue_capacity",
        "OLLAMA_MAX_QUEUE: most jobs that may wait.",
        value=services.admission.max_queue,
    )
    try:
        queued = await services.admission.waiting()
        states = await services.workers.states()
    except (aioredis.RedisError, OSError) as exc:
        # Still answer: the counters (rejections "redis_unavailable" among them) matter most while Redis
        # is away. The gauges read from it are left out rather than shown as a false 0.
        log.warning("metrics without the queue and worker gauges: redis unreachable: %s", exc)
        return [capacity]
    waiting = GaugeMetricFamily(
        "herd_queue_waiting", "Jobs admitted and not yet started by a worker.", value=queued
    )
    live = GaugeMetricFamily("herd_workers_live", "Workers whose heartbeat is current.", value=len(states))
    busy = GaugeMetricFamily("herd_slots_busy", "Sequence slots decoding, per worker.", labels=["worker"])
    total = GaugeMetricFamily("herd_slots_total", "Sequence slots, per worker.", labels=["worker"])
    for state in states:
        busy.add_metric([state.worker_id], state.slots_busy)
        total.add_metric([state.worker_id], state.slots_total)
    return [capacity, waiting, live, busy, total]


class _Families(Collector):
    """Metric families already built, in the shape generate_latest reads."""

    def __init__(self, families: list[GaugeMetricFamily]):
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


async def render(services: Services) -> bytes:
    """The text exposition: the counters of every API process, then the live queue and worker gauges."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        counters = CollectorRegistry()
        MultiProcessCollector(counters)
    else:
        from prometheus_client import REGISTRY as counters  # a single process: its own registry
    return generate_latest(counters) + generate_latest(_Families(await _live_families(services)))
