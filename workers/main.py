"""The worker process: one per GPU (or the CPU), long-lived, models kept in memory between jobs."""

from __future__ import annotations

import logging

from rq.serializers import JSONSerializer

from herd.contracts import SHARED_QUEUE
from herd.logs import configure_logging
from herd.settings import load_settings
from workers import jobs, metrics
from workers.rq_worker import DEQUEUE_POLL_S, FlagStoppedWorker, claim_worker_name, redis_client
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


class HerdWorker(FlagStoppedWorker):
    """An RQ worker that never forks and takes a job only while it has a free sequence slot.

    SIGTERM (or SIGINT) stops it taking jobs; the sequences it runs then drain (WorkerRuntime.drain).
    RQ's own warm shutdown is not enough: a job function returns as soon as its sequence is submitted,
    so RQ would exit with generations still decoding.
    """

    def __init__(self, *args: object, runtime: WorkerRuntime, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.runtime = runtime

    def on_stop_requested(self) -> None:
        self.runtime.request_drain()

    def queues_to_read(self) -> list[str]:
        return self.runtime.queues_to_read()

    def ready_for_job(self) -> bool:
        # At least once a second, whatever the loop waits for: a worker without its decode or heartbeat
        # thread must not go on taking jobs.
        self.runtime.check_threads()
        # Waiting jobs stay in Redis (where OLLAMA_MAX_QUEUE counts them) until a slot is free here.
        if self.runtime.wait_for_free_slot(timeout=DEQUEUE_POLL_S):
            return True
        self.heartbeat()
        return False


def main() -> None:
    """Entry point of `herd worker` and `python -m workers.main`."""
    settings = load_settings(WorkerSettings)
    configure_logging("worker", settings.debug)
    client = redis_client(settings)
    claim_worker_name(client, settings.worker_id, settings.heartbeat_s, "HERD_WORKER_ID")
    # Before any model loads, so the first load is already counted where Prometheus can see it.
    stop_metrics = metrics.serve(settings.metrics_host, settings.metrics_port)
    runtime = WorkerRuntime(settings, client)
    worker = HerdWorker(
        [runtime.queue_name, SHARED_QUEUE],
        name=settings.worker_id,
        connection=client,
        serializer=JSONSerializer,
        runtime=runtime,
    )
    # Before the runtime advertises this worker (the stack counts it ready then): a SIGTERM from that
    # moment on must drain, not kill. RQ installs the same handlers again in work(), which keeps the flag.
    worker._install_signal_handlers()
    jobs.bind_runtime(runtime)
    runtime.start()
    log.info(
        "worker started",
        extra={"worker": settings.worker_id, "device": settings.device, "models": str(settings.models_dir)},
    )
    try:
        worker.work(logging_level="WARNING")
    finally:
        runtime.drain(settings.drain_s)
        runtime.stop()
        jobs.bind_runtime(None)
        stop_metrics()  # after the runtime, which records its shutdown evictions as it stops
        log.info("worker stopped", extra={"worker": settings.worker_id})


if __name__ == "__main__":
    main()
