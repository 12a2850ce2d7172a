"""A worker's graceful stop: leave placement, requeue waiting jobs, let running ones finish, fail the rest.

SIGTERM only sets flags (`Drain.request`: a signal handler must not touch Redis); the main loop then
runs `Drain.run`. A second SIGTERM cuts the wait short.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from herd.contracts import QUEUE_KEYS_SET, SHARED_QUEUE, WORKERS_SET, rq_queue_key
from herd.queue_moves import MOVE_QUEUE
from workers.cache import ModelCache
from workers.publisher import Publisher
from workers.running import RunningJobs

log = logging.getLogger(__name__)

# Poll interval of the drain's wait for running sequences.
_DRAIN_POLL_S = 0.05
# After the drain, how long the decode loop gets to end the rest (one step) before the worker does.
_SHUTDOWN_STEP_S = 10.0


def requeue_waiting(client: redis.Redis, queue_name: str) -> int:
    """Hand the jobs still waiting in a worker's own queue to the shared queue; returns how many."""
    keys = [rq_queue_key(queue_name), rq_queue_key(SHARED_QUEUE), QUEUE_KEYS_SET]
    return int(client.eval(MOVE_QUEUE, len(keys), *keys, SHARED_QUEUE))


class Drain:
    """One worker's drain: its flags, set from a signal handler, and the stop it runs from the main loop."""

    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        queue_name: str,
        cache: ModelCache,
        running: RunningJobs,
        publisher: Publisher,
        wake: threading.Event,
    ):
        self._client = client
        self._worker_id = worker_id
        self._queue_name = queue_name
        self._cache = cache
        self._running = running
        self._publisher = publisher  # the job thread's: the drain runs on the main thread
        self._wake = wake  # the decode loop's
        # Plain flags, not Events: request() runs in a signal handler on the main thread, and an Event's
        # set() takes a lock the main thread may be holding at that moment (a self-deadlock). Readers poll.
        self._draining = False
        self._cut = False
        # When the first SIGTERM came and how many sequences ran then: the drain counts from there.
        self._requested_at: float | None = None
        self._running_at_drain = 0

    @property
    def active(self) -> bool:
        return self._draining

    def request(self) -> None:
        """Stop taking jobs (from a signal handler); asked again, fail running sequences at once."""
        if self._draining:
            self._cut = True
        else:
            self._requested_at = time.monotonic()
            self._running_at_drain = self._running.count_unlocked()  # no lock in a signal handler
        self._draining = True

    def requeue_waiting(self) -> int:
        """Hand the jobs still waiting in this worker's own queue to the shared queue; returns how many."""
        return requeue_waiting(self._client, self._queue_name)

    def run(self, timeout: float) -> int:
        """Let running sequences finish for up to `timeout` seconds, then fail the rest; returns how many failed.

        The worker leaves placement first (no API sends it new jobs) but keeps its heartbeat, by which the
        API tells a draining worker from a dead one. Jobs waiting in its own queue go to the shared queue.
        """
        if self._requested_at is None:  # not request(): after a SIGTERM that is a second one
            self._requested_at = time.monotonic()
            self._running_at_drain = len(self._running)
        self._draining = True
        started = self._requested_at
        try:
            self._client.srem(WORKERS_SET, self._worker_id)
            moved = self.requeue_waiting()
        except redis.RedisError:
            log.warning("could not leave placement or requeue waiting jobs: Redis unreachable")
            moved = 0
        running = self._running_at_drain
        log.info(
            "draining",
            extra={
                "worker": self._worker_id,
                "running": running,
                "requeued": moved,
                "drain_s": timeout,
            },
        )
        deadline = started + timeout
        self._wait_idle(deadline, cut=True)
        waited = time.monotonic() - started
        message = (
            f"worker shutting down: generation stopped after {waited:.1f}s of drain "
            f"(HERD_DRAIN_SECONDS={timeout:g}); retry the request"
        )
        left = self._running.fail_all(message)
        with self._cache.lock:
            for job_id, entry in left.items():
                entry.loaded.engine.cancel(job_id)
        self._wake.set()
        # The decode loop ends them at its next step, sending the error after their last token; the
        # heartbeat goes on meanwhile, so the API never takes this worker for dead.
        self._wait_idle(time.monotonic() + _SHUTDOWN_STEP_S, cut=False)
        stuck = self._running.take_all()
        # Still listed: finished on their own at that last step (or stuck); the rest got the error.
        failed = len(left) - sum(self._running.has_shutdown_error(job_id) for job_id in left) + len(stuck)
        for entry in stuck:  # the decode loop is wedged: fail them from here
            try:
                self._publisher.send(entry.job.job_id, "error", status=503, error=message)
            except redis.RedisError:
                log.warning(
                    "could not fail a job: Redis unreachable", extra={"request_id": entry.job.request_id}
                )
        try:
            # A placement that read this worker's state just before it left may have pushed since.
            moved += self.requeue_waiting()
        except redis.RedisError:
            log.warning("could not requeue late jobs: Redis unreachable; they wait for this worker's restart")
        log.info(
            "drained",
            extra={
                "worker": self._worker_id,
                "finished": running - failed,
                "failed": failed,
                "stuck": len(stuck),
                "requeued": moved,
                "seconds": round(waited, 3),
            },
        )
        return failed

    def _wait_idle(self, deadline: float, *, cut: bool) -> None:
        """Wait until no sequence runs, the deadline passes or (with `cut`) a second SIGTERM comes."""
        while len(self._running) and time.monotonic() < deadline and not (cut and self._cut):
            time.sleep(_DRAIN_POLL_S)
