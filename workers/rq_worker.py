"""The RQ worker base of both Herd worker kinds: SIGTERM and SIGINT only raise flags.

RQ's own handler raises StopRequested wherever the main thread is, which can cut a Redis reply (a popped
job) in half, or lets a running job go on for minutes (warm shutdown). Here a signal handler touches no
Redis: it sets RQ's stop flag and calls `on_stop_requested`, and the dequeue loop checks the flag between
short pops.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

from rq.job import Job
from rq.queue import Queue
from rq.worker import SimpleWorker

log = logging.getLogger(__name__)

# Seconds one blocking pop waits for a job: how soon the dequeue loop notices a stop request.
DEQUEUE_POLL_S = 1


class FlagStoppedWorker(SimpleWorker):
    """A never-forking RQ worker that stops taking jobs on SIGTERM/SIGINT without interrupting anything."""

    # Logged on the signal, after "received SIGTERM: ".
    stop_message = "taking no more jobs"

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s: %s", signal.Signals(signum).name, self.stop_message)
        self._stop_requested = True
        self.on_stop_requested()

    def on_stop_requested(self) -> None:
        """What the worker kind does at once on a stop signal (flags only: no Redis, no blocking)."""

    def ready_for_job(self) -> bool:
        """Whether to pop a job now; a kind that must wait (for a free slot) waits here, briefly."""
        return True

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        while not self._stop_requested:
            if not self.ready_for_job():
                continue
            # RQ returns None once a pop has been idle for max_idle_time; the loop then pops again.
            result = super().dequeue_job_and_maintain_ttl(DEQUEUE_POLL_S, max_idle_time=DEQUEUE_POLL_S)
            if result is not None:
                return result
        return None  # RQ's loop then ends and records this worker's death
