"""The store worker (`herd store-worker`): one RQ worker on the `herd-models` queue for pull, push and create.

Model jobs are disk- and network-bound and can take minutes, so they run here and never in a web
process or an inference worker. The process heartbeats a state key (not in the inference workers' set,
so it never shows in /api/ps or placement) by which the API tells a dead store worker from a slow job.

On SIGTERM it takes no more jobs and stops the running one at its next cancel check, with an error its
client sees. The store stays whole: blobs are renamed into place only once verified and a manifest is
written last, so a stopped pull leaves at most a partial blob that the next pull resumes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import redis
from pydantic import AliasChoices, Field, field_validator
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from herd.contracts import EVENT_STREAM_TTL_S, MODELS_QUEUE, cancel_key, worker_state_key
from herd.logs import configure_logging
from herd.settings import load_settings
from herd.store import ModelStore
from herd.store.temps import remove_leftovers
from workers.publisher import Publisher
from workers.rq_worker import FlagStoppedWorker, claim_worker_name, redis_client
from workers.store import jobs as store_jobs
from workers.store.registry import RegistrySettings

log = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = (
    "store worker shutting down: {kind} of {model} stopped; nothing was written to the store for it "
    "(a pull resumes from what it downloaded); retry it"
)


def _default_store_worker_id() -> str:
    return f"store-{socket.gethostname()}-{os.getpid()}"


class StoreWorkerSettings(RegistrySettings):
    """The store worker process (pulls and pushes, so the registry settings too)."""

    worker_id: str = Field(
        default_factory=_default_store_worker_id,
        validation_alias=AliasChoices("HERD_STORE_WORKER_ID"),
        description="Name of this store worker (its RQ name and heartbeat key derive from it); empty: "
        "store-<host>-<pid>, unique across restarts.",
    )
    heartbeat_s: float = Field(
        default=1.0,
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

    @field_validator("worker_id")
    @classmethod
    def _empty_is_default(cls, value: str) -> str:
        # compose passes HERD_STORE_WORKER_ID through even when unset: empty means the unique default.
        return value or _default_store_worker_id()


class Heartbeat(threading.Thread):
    """Keeps the store worker's state key alive while the process runs, even during a long job."""

    def __init__(self, client: redis.Redis, settings: StoreWorkerSettings, incarnation: str):
        super().__init__(name="store-heartbeat", daemon=True)
        self._client = client
        self._settings = settings
        self._incarnation = incarnation
        # Not `_stop`: that is threading.Thread's own method, which join() calls.
        self._stopping = threading.Event()
        self._reachable = True  # whether the last beat reached Redis

    def beat(self) -> None:
        doc = {
            "worker_id": self._settings.worker_id,
            "incarnation": self._incarnation,
            "pid": os.getpid(),
            "kind": "store",
            "at": time.time(),
        }
        ttl_ms = int(self._settings.heartbeat_s * 3 * 1000)
        self._client.set(worker_state_key(self._settings.worker_id), json.dumps(doc), px=ttl_ms)

    def run(self) -> None:
        while not self._stopping.wait(self._settings.heartbeat_s):
            try:
                self.beat()
            except redis.RedisError as exc:
                if self._reachable:
                    log.warning("store worker heartbeat failed: %s", exc)
                self._reachable = False
            else:
                self._reachable = True

    def stop(self, redis_reachable: bool = True) -> None:
        """Stop beating and clear the state key; with Redis unreachable, leave the key to expire instead."""
        self._stopping.set()
        if not (redis_reachable and self._reachable):
            # A beat may be waiting on a hung Redis: neither it nor a delete may hold up the stop.
            log.warning("Redis unreachable: the store worker's state is left to expire")
            return
        self.join(timeout=1)
        try:
            self._client.delete(worker_state_key(self._settings.worker_id))
        except redis.RedisError as exc:
            log.warning("could not clear the store worker's state: %s", exc)


class StoreWorker(FlagStoppedWorker):
    """The RQ worker of the model queue; SIGTERM only raises flags, acted on by the loop and a JobStopper."""

    stop_message = "taking no more model jobs"

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.running_job: Job | None = None
        self.stopping = threading.Event()

    def on_stop_requested(self) -> None:
        # A pull can run for minutes: the JobStopper thread sees this and stops the running job.
        self.stopping.set()

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.running_job = job
        try:
            super().execute_job(job, queue)
        finally:
            self.running_job = None


class JobStopper(threading.Thread):
    """Once the worker is stopping, fails its running job with a clear error and stops it.

    The error goes to the job's stream first (the API relays it and ends the request); the cancel flag
    then makes the job stop at its next check, where it removes nothing and publishes no manifest.
    """

    def __init__(self, worker: StoreWorker, client: redis.Redis):
        super().__init__(name="store-job-stopper", daemon=True)
        self._worker = worker
        self._client = client
        self._publisher = Publisher(client)

    def run(self) -> None:
        self._worker.stopping.wait()
        stopped: set[str] = set()
        while True:
            # A job popped just as the signal came is stopped too.
            job = self._worker.running_job
            if job is not None and job.id not in stopped:
                stopped.add(job.id)
                self._stop_job(job)
            time.sleep(0.1)

    def _stop_job(self, job: Job) -> None:
        payload = job.kwargs.get("payload", {})
        kind, model = str(payload.get("kind", "model job")), str(payload.get("model", "?"))
        try:
            self._publisher.send(
                job.id, "error", status=503, error=SHUTDOWN_MESSAGE.format(kind=kind, model=model)
            )
            self._client.set(cancel_key(job.id), "1", ex=EVENT_STREAM_TTL_S)
        except redis.RedisError as exc:
            log.warning("could not stop model job %s: %s", job.id, exc)
            return
        log.info("stopping model job for shutdown", extra={"job": job.id, "kind": kind, "model": model})


def main() -> None:
    """Entry point of `herd store-worker` and `python -m workers.store.worker`."""
    settings = load_settings(StoreWorkerSettings)
    configure_logging("store-worker", settings.debug)
    remove_leftovers(ModelStore(settings.models_dir))  # what a killed create or upload left on disk
    client = redis_client(settings)
    # This start of the process, as the inference worker draws one: the API tells by it that a job's
    # worker died even once the supervisor restarted it under the same id.
    incarnation = uuid.uuid4().hex
    claim_worker_name(client, settings.worker_id, settings.heartbeat_s, "HERD_STORE_WORKER_ID")
    heartbeat = Heartbeat(client, settings, incarnation)
    heartbeat.beat()
    heartbeat.start()
    store_jobs.bind_context(
        store_jobs.StoreContext(
            store=ModelStore(settings.models_dir),
            client=client,
            worker_id=settings.worker_id,
            incarnation=incarnation,
            threads=settings.threads,
            registry=settings,
        )
    )
    log.info("store worker started", extra={"worker": settings.worker_id, "models": str(settings.models_dir)})
    worker = StoreWorker(
        [MODELS_QUEUE], name=settings.worker_id, connection=client, serializer=JSONSerializer
    )
    JobStopper(worker, client).start()
    try:
        worker.work(logging_level="WARNING")
    finally:
        store_jobs.bind_context(None)
        heartbeat.stop(redis_reachable=not worker.redis_unreachable)
        log.info("store worker stopped", extra={"worker": settings.worker_id})


if __name__ == "__main__":
    main()
