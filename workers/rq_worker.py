"""The RQ worker base of both Herd worker kinds: SIGTERM and SIGINT only raise flags, and are obeyed within
seconds even while Redis is down or hung.

RQ's own handler raises StopRequested wherever the main thread is, which can cut a Redis reply (a popped
job) in half, or lets a running job go on for minutes (warm shutdown). Here a signal handler touches no
Redis: it sets RQ's stop flag and calls `on_stop_requested`, and the dequeue loop checks the flag between
short pops.

Three of RQ's habits would still hold a stop for up to a minute, and are replaced:
- its command listener (a pub/sub thread that sleeps 60 s between reads) is joined at teardown; Herd
  sends its workers no RQ commands (stops are signals, cancellations herd:cancel keys), so none is started;
- it retries an unreachable Redis inside its dequeue loop, backing off to a minute without looking at the
  stop flag: a failed pop leaves that loop here, and the retry (every REDIS_RETRY_S) checks the flag;
- it raises its connection's socket timeout to fit its own blocking pop (over 400 s): Herd's pops last
  DEQUEUE_POLL_S, so the timeout stays REDIS_SOCKET_TIMEOUT_S, and a hung Redis is noticed within it;
- its teardown records the worker's death in Redis: with Redis unreachable that would wait on every call,
  so it is skipped, and the registration expires (the inference worker's start clears a stale one).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

import redis
from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from herd.contracts import worker_state_key
from herd.redis_connect import check_access, sync_client
from herd.settings import CommonSettings

log = logging.getLogger(__name__)

# Seconds one blocking pop waits for a job: how soon the dequeue loop notices a stop request.
DEQUEUE_POLL_S = 1
# Longest wait for any one Redis reply. A hung Redis (stopped, or its host gone) otherwise blocks a call
# for ever, signals included. Above DEQUEUE_POLL_S, which a blocking pop legitimately waits.
REDIS_SOCKET_TIMEOUT_S = DEQUEUE_POLL_S + 2
# While Redis is unreachable, how long the work loop waits before it tries again.
REDIS_RETRY_S = 1.0
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
_T = TypeVar("_T")


def until_redis_answers(
    call: Callable[[], _T],
    *,
    stopping: Callable[[], bool],
    on_error: Callable[[Exception], None] = lambda _: time.sleep(REDIS_RETRY_S),
) -> _T:
    """``call()``, tried again while Redis is unreachable (``on_error`` waits between tries) until it
    answers; raises the Redis error once ``stopping()`` says the process is stopping."""
    while True:
        try:
            return call()
        except _REDIS_DOWN as exc:
            if stopping():
                raise
            on_error(exc)


class RedisUnreachable(Exception):
    """A pop failed on Redis; raised past RQ's own retry loop, which would not look at the stop flag."""


class _Queue(Queue):
    @classmethod
    def dequeue_any(cls, *args: object, **kwargs: object) -> tuple[Job, Queue] | None:
        try:
            return super().dequeue_any(*args, **kwargs)  # type: ignore[arg-type]
        except _REDIS_DOWN as exc:
            raise RedisUnreachable(str(exc)) from exc


def redis_client(settings: CommonSettings) -> redis.Redis:
    """A worker's Redis client, which waits at most REDIS_SOCKET_TIMEOUT_S for a connection or a reply.

    Exits naming the problem when Redis refuses the credentials or TLS of HERD_REDIS_URL (herd/redis_connect.py).
    """
    client = sync_client(
        settings,
        health_check_interval=30,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    check_access(client, settings)
    return client


class FlagStoppedWorker(SimpleWorker):
    """A never-forking RQ worker that stops taking jobs on SIGTERM/SIGINT without interrupting anything."""

    queue_class = _Queue
    # Logged on the signal, after "received SIGTERM: ".
    stop_message = "taking no more jobs"
    # Set on a failed Redis call of the work loop, cleared by a successful pop.
    redis_unreachable = False

    @property
    def connection_timeout(self) -> int:
        """The socket timeout RQ gives the worker's Redis connection (see the module's docstring)."""
        return REDIS_SOCKET_TIMEOUT_S

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

    def queues_to_read(self) -> list[str] | None:
        """The queue names to pop from now, in order; None keeps the ones the worker was started with."""
        return None

    def _refresh_queues(self) -> None:
        """Follow the worker kind's queue list, which can change between pops (a model loaded, assigned)."""
        names = self.queues_to_read()
        if names is None or names == [q.name for q in self.queues]:
            return
        self.queues = [
            self.queue_class(n, connection=self.connection, serializer=self.serializer) for n in names
        ]
        self._ordered_queues = self.queues[:]

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        while not self._stop_requested:
            if not self.ready_for_job() or self._stop_requested:
                # A stop that came while it waited for a slot: it takes no job after all.
                continue
            try:
                self._refresh_queues()
                # RQ returns None once a pop has been idle for max_idle_time; the loop then pops again.
                result = super().dequeue_job_and_maintain_ttl(DEQUEUE_POLL_S, max_idle_time=DEQUEUE_POLL_S)
            except (RedisUnreachable, *_REDIS_DOWN) as exc:  # the pop, or RQ's bookkeeping around it
                self._redis_down(exc)
                continue
            self.redis_unreachable = False
            if result is not None:
                return result
        return None  # RQ's loop then ends and records this worker's death

    def _redis_down(self, exc: Exception) -> None:
        """Log an unreachable Redis and wait REDIS_RETRY_S, cut short by a stop request."""
        if not self.redis_unreachable:
            log.warning("Redis unreachable (%s); retrying every %gs", exc, REDIS_RETRY_S)
        self.redis_unreachable = True
        deadline = time.monotonic() + REDIS_RETRY_S
        while not self._stop_requested and time.monotonic() < deadline:
            time.sleep(0.05)

    # RQ's work loop quits on a Redis error outside its own dequeue. A Herd worker outlives a Redis restart
    # instead (an inference worker's models stay loaded): these calls of the loop wait for Redis instead.
    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if self.redis_unreachable and pipeline is None:
            return  # the next pop tells when Redis is back; a call now would only wait on it
        try:
            super().heartbeat(timeout, pipeline)
        except _REDIS_DOWN as exc:
            self._redis_down(exc)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except _REDIS_DOWN as exc:
            # RQ's bookkeeping after the job function returned (its result, the started registry) met a
            # Redis going away. The job itself ran: its answer travels on Herd's own event stream.
            self._redis_down(exc)

    # A job popped just as Redis went away (or failed over) must still run: it is in no queue any more,
    # and its client waits for it. RQ's bookkeeping before the run is tried again until Redis answers;
    # the job then checks its lease (workers/jobs.py), so one whose client gave up meanwhile is dropped.
    def prepare_execution(self, job: Job) -> Execution:
        return self._until_redis_answers(lambda: super(FlagStoppedWorker, self).prepare_execution(job))

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        self._until_redis_answers(
            lambda: super(FlagStoppedWorker, self).prepare_job_execution(job, remove_from_intermediate_queue)
        )

    def _until_redis_answers(self, call: Callable[[], _T]) -> _T:
        return until_redis_answers(call, stopping=lambda: self._stop_requested, on_error=self._redis_down)

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except _REDIS_DOWN as exc:
            self._redis_down(exc)

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except _REDIS_DOWN as exc:
            self._redis_down(exc)

    def subscribe(self) -> None:
        """Start no RQ command listener (see the module's docstring)."""

    def teardown(self) -> None:
        if self.redis_unreachable:
            log.warning("Redis unreachable: this worker's RQ registration is left to expire")
            return
        try:
            super().teardown()
        except _REDIS_DOWN as exc:
            log.warning("could not record this worker's stop in Redis: %s", exc)


class WorkerNameTaken(SystemExit):
    """Another live worker heartbeats under this worker id."""


def claim_worker_name(client: redis.Redis, worker_id: str, heartbeat_s: float, variable: str) -> None:
    """Take over this worker id from a dead predecessor, or refuse if a live worker holds it.

    A worker killed outright (SIGKILL, OOM) leaves RQ's registration behind, and RQ then refuses a new
    worker of the same name. Herd's own state key expires three heartbeats after its worker stops, so
    once it is gone the old registration is known to be stale and is removed. ``variable`` names the
    setting in the refusal (HERD_WORKER_ID, HERD_STORE_WORKER_ID).
    """
    state = worker_state_key(worker_id)
    deadline = time.monotonic() + heartbeat_s * 3 + 1
    while client.exists(state):
        if time.monotonic() > deadline:
            raise WorkerNameTaken(
                f"herd: a live worker already runs as {variable}={worker_id!r}; give this one another id"
            )
        time.sleep(0.1)
    stale = SimpleWorker.find_by_key(
        f"{SimpleWorker.redis_worker_namespace_prefix}{worker_id}",
        connection=client,
        serializer=JSONSerializer,
    )
    if stale is not None:
        log.warning("recording the death of a worker that was killed", extra={"worker": worker_id})
        stale.register_death()
