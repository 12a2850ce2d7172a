"""The store worker (`herd store-worker`): one RQ worker on the `herd-models` queue for pull, push and create.

Model jobs are disk- and network-bound and can take minutes, so they run here and never in a web
process or an inference worker. The process heartbeats a state key (not in the inference workers' set,
so it never shows in /api/ps or placement) by which the API tells a dead store worker from a slow job.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import redis
from pydantic import AliasChoices, Field
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from app.contracts import MODELS_QUEUE, worker_state_key
from app.logs import configure_logging
from app.registry import RegistrySettings
from app.settings import load_settings
from app.store import ModelStore
from workers import store_jobs

log = logging.getLogger(__name__)


class StoreWorkerSettings(RegistrySettings):
    """The store worker process (pulls and pushes, so the registry settings too)."""

    worker_id: str = Field(
        default_factory=lambda: f"store-{socket.gethostname()}-{os.getpid()}",
        validation_alias=AliasChoices("HERD_STORE_WORKER_ID"),
        description="Name of this store worker (its RQ name and heartbeat key derive from it).",
    )
    heartbeat_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        validation_alias=AliasChoices("HERD_HEARTBEAT"),
        description="Seconds between heartbeats; the API counts the worker dead after three missed.",
    )
    threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        validation_alias=AliasChoices("HERD_THREADS"),
        description="Threads llama.cpp quantizes with (0: every core).",
    )


class Heartbeat(threading.Thread):
    """Keeps the store worker's state key alive while the process runs, even during a long job."""

    def __init__(self, client: redis.Redis, settings: StoreWorkerSettings):
        super().__init__(name="store-heartbeat", daemon=True)
        self._client = client
        self._settings = settings
        self._stop = threading.Event()

    def beat(self) -> None:
        doc = {"worker_id": self._settings.worker_id, "pid": os.getpid(), "kind": "store", "at": time.time()}
        ttl_ms = int(self._settings.heartbeat_s * 3 * 1000)
        self._client.set(worker_state_key(self._settings.worker_id), json.dumps(doc), px=ttl_ms)

    def run(self) -> None:
        while not self._stop.wait(self._settings.heartbeat_s):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("store worker heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self.join(timeout=5)
        try:
            self._client.delete(worker_state_key(self._settings.worker_id))
        except redis.RedisError as exc:
            log.warning("could not clear the store worker's state: %s", exc)


def main() -> None:
    """Entry point of `herd store-worker` and `python -m workers.store_worker`."""
    settings = load_settings(StoreWorkerSettings)
    configure_logging("store-worker", settings.debug)
    client = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    heartbeat = Heartbeat(client, settings)
    heartbeat.beat()
    heartbeat.start()
    store_jobs.bind_context(
        store_jobs.StoreContext(
            store=ModelStore(settings.models_dir),
            client=client,
            worker_id=settings.worker_id,
            threads=settings.threads,
            registry=settings,
        )
    )
    log.info("store worker started", extra={"worker": settings.worker_id, "models": str(settings.models_dir)})
    worker = SimpleWorker(
        [MODELS_QUEUE], name=settings.worker_id, connection=client, serializer=JSONSerializer
    )
    try:
        worker.work(logging_level="WARNING")
    finally:
        store_jobs.bind_context(None)
        heartbeat.stop()
        log.info("store worker stopped", extra={"worker": settings.worker_id})


if __name__ == "__main__":
    main()
