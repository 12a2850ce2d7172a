"""A worker's runtime: what one worker process holds between jobs, its threads, and its advertised state.

Threads: RQ's loop runs job functions on the main thread (prepare: resolve, load, render, tokenize,
submit; workers/prepare.py); one decode thread steps every busy engine and a publishing thread beside it
sends the tokens (workers/decode_loop.py); one heartbeat thread keeps this worker's state key alive. No
lock is held across a decode step; a model is freed only when idle, under the cache lock. The decode and heartbeat
threads are vital (workers/watchdog.py): if either dies the process ends, and the supervisor restarts it
as a new incarnation. SIGTERM drains the worker (workers/drain.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from herd.contracts import (
    EVENT_STREAM_TTL_S,
    JOB_FUNC_EMBED,
    JOB_FUNC_GENERATE,
    JOB_RESULT_TTL_S,
    QUEUE_KEYS_SET,
    SHARED_QUEUE,
    WORKERS_SET,
    EmbedJob,
    GenerateJob,
    WorkerState,
    assigned_key,
    cancel_key,
    manifest_key,
    model_queue_name,
    rq_queue_key,
    worker_last_key,
    worker_queue_name,
    worker_state_key,
)
from herd.durations import parse_keep_alive
from herd.names import InvalidModelName, ModelName
from herd.store import ModelStore, StoredModel
from herd.templates.chat import TemplateError
from workers import prepare
from workers.blob_fetch import BlobFetcher, FetchError, store_blobs
from workers.cache import AUTO_PARALLEL, InvalidKeepAlive, LoadedModel, ModelCache, ModelTooLarge
from workers.decode_loop import DecodeLoop, decode_threads_take_every_core
from workers.drain import Drain
from workers.embedder import InputTooLong
from workers.engine_io import ContextError, SequenceRequest
from workers.grammar import FormatError, grammar_for_format
from workers.llama import ModelLoadError, supports_gpu_offload
from workers.metrics import WorkerMetrics
from workers.prepare import JobError
from workers.publisher import Publisher
from workers.running import Running, RunningJobs
from workers.sampling import GrammarError
from workers.settings import WorkerSettings
from workers.start_gate import StartGate
from workers.stream_pacer import StreamPacer, stream_interval_s
from workers.watchdog import VitalThreads, die

log = logging.getLogger(__name__)

# Times a job goes back to the shared queue because a worker could not get its model's files.
MAX_REQUEUES = 3
# Seconds between scans of the store's blobs for the advertised state (a fetch rescans at once).
_BLOB_SCAN_S = 10.0


class WorkerRuntime:
    """Everything one worker process holds between jobs."""

    def __init__(
        self, settings: WorkerSettings, client: redis.Redis, on_thread_death: Callable[[str], None] = die
    ):
        self.settings = settings
        self.client = client
        # This process's start, unique across restarts under the same worker id: the API tells by it
        # that the worker which started a job is gone even once a new one heartbeats under that id.
        self.incarnation = uuid.uuid4().hex
        self.store = ModelStore(settings.models_dir)
        self.fetcher = BlobFetcher(self.store, client, settings.store_url, settings.store_key)
        # The large blobs this worker's store has, advertised for placement; rescanned now and then.
        self._blobs: list[str] = []
        self._blobs_scanned = 0.0
        self.queue_name = worker_queue_name(settings.worker_id)
        self.metrics = WorkerMetrics(settings.worker_id)
        self.cache = ModelCache(
            max_loaded=settings.max_loaded_models,
            n_parallel=settings.num_parallel,
            threads=settings.threads,
            n_gpu_layers=settings.n_gpu_layers,
            default_keep_alive=parse_keep_alive(settings.keep_alive_default),
            memory_limit=settings.memory_limit,
            gpu_index=settings.gpu_index,
            metrics=self.metrics,
            batch_invariant=settings.batch_invariant,
            on_change=self._state_changed,
        )
        self._running = RunningJobs()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state_dirty = threading.Event()
        self._slot_freed = threading.Event()
        self._job_publisher = Publisher(client)  # main thread only
        self._gate = StartGate()
        self._reading: list[str] = []  # the queues of the main thread's last pop
        inline = decode_threads_take_every_core(
            settings.threads, gpu_offload=settings.n_gpu_layers != 0 and supports_gpu_offload()
        )
        self._decoder = DecodeLoop(
            self.cache,
            self._running,
            Publisher(client),  # decode thread only
            stop=self._stop,
            wake=self._wake,
            slot_freed=self._slot_freed,
            state_dirty=self._state_dirty,
            gate=self._gate,
            pacer=StreamPacer(stream_interval_s(settings.stream_interval_ms, inline)),
            inline=inline,
        )
        self._drain = Drain(
            client,
            settings.worker_id,
            self.queue_name,
            self.cache,
            self._running,
            self._job_publisher,
            self._wake,
        )
        self._threads = VitalThreads(self._stop, on_thread_death)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Register this worker and start the decode and heartbeat threads."""
        self.client.sadd(WORKERS_SET, self.settings.worker_id)
        self.client.sadd(QUEUE_KEYS_SET, rq_queue_key(self.queue_name))
        self._fail_predecessor_jobs()
        self.publish_state()
        self._threads.start(self._decoder.run, "decode")
        self._threads.start(self._heartbeat_loop, "heartbeat")

    def check_threads(self) -> None:
        """Called by the main loop: ends the process if the decode or heartbeat thread is gone."""
        self._threads.check()

    def stop(self) -> None:
        """Stop the threads, free every model and withdraw this worker's state."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads.threads:
            thread.join(timeout=10)
        self.cache.close()
        try:
            pipe = self.client.pipeline()
            pipe.delete(worker_state_key(self.settings.worker_id))
            pipe.delete(worker_last_key(self.settings.worker_id))
            pipe.srem(WORKERS_SET, self.settings.worker_id)
            pipe.execute()
        except redis.RedisError:
            log.warning("could not withdraw worker state from Redis")

    def request_drain(self) -> None:
        """Stop taking jobs (from a signal handler); asked again, fail running sequences at once."""
        # Flags only: this runs in a signal handler, on the main thread, which may hold an Event's lock
        # right now (waiting for a free slot); the dequeue loop sees the stop within DEQUEUE_POLL_S.
        self._drain.request()

    @property
    def draining(self) -> bool:
        return self._drain.active

    def requeue_waiting(self) -> int:
        """Hand the jobs still waiting in this worker's own queue to the shared queue; returns how many."""
        return self._drain.requeue_waiting()

    def drain(self, timeout: float) -> int:
        """Let running sequences finish for up to `timeout` seconds, then fail the rest (workers/drain.py).

        Returns how many failed.
        """
        return self._drain.run(timeout)

    def queues_to_read(self) -> list[str]:
        """The RQ queues to pop from, in order: this worker's own, its models' and its assigned ones, shared.

        A model's queue is read by every worker that holds the model (app/placement.py), and by those
        placement assigned to it (a cold model's first reader, or a replica of a saturated one).
        """
        held = [model_queue_name(m.name) for m in self.cache.states()]
        assigned = sorted(
            q.decode() if isinstance(q, bytes) else str(q)
            for q in self.client.smembers(assigned_key(self.settings.worker_id))
        )
        self._reading = [self.queue_name, *held, *(q for q in assigned if q not in held), SHARED_QUEUE]
        return self._reading

    def _more_jobs_waiting(self) -> bool:
        """Whether the decode loop, idle now, should wait for more jobs before it starts (start_gate.py):
        jobs wait in the queues this worker reads, and a slot is free for the next one.

        Asked only while the decode loop is idle, so a worker that is decoding sends no extra command.
        """
        if not self._decoder.idle or self.slots_busy + 1 >= self.slots_total:
            return False
        try:
            pipe = self.client.pipeline(transaction=False)
            for name in self._reading:
                pipe.llen(rq_queue_key(name))
            return any(pipe.execute())
        except redis.RedisError:
            return False  # the job starts now rather than waits on a Redis that is going away

    def _fail_predecessor_jobs(self) -> None:
        """Fail, and flag cancelled, the jobs an earlier process under this worker id left running.

        A restart under the same (stable) id can come before the API's sweeper saw the old state expire;
        its last state, kept without a TTL, names the jobs it ran, and nobody runs them now.
        """
        doc = self.client.get(worker_last_key(self.settings.worker_id))
        if doc is None:
            return
        try:
            last = WorkerState.model_validate_json(doc)
        except ValueError:
            return
        if last.incarnation == self.incarnation:
            return
        message = f"the worker running this request ({self.settings.worker_id}) stopped; please retry"
        for job_id in last.running:
            if self.client.set(cancel_key(job_id), "1", nx=True, ex=EVENT_STREAM_TTL_S):
                self._job_publisher.send(job_id, "error", status=500, error=message)
        self.client.delete(worker_last_key(self.settings.worker_id))
        if last.running:
            log.warning(
                "failed the jobs a killed predecessor left running", extra={"jobs": len(last.running)}
            )

    # --- slots -------------------------------------------------------------------------------------

    @property
    def slots_total(self) -> int:
        """Jobs this worker runs at once: OLLAMA_NUM_PARALLEL, or the automatic choice's upper bound."""
        return self.settings.num_parallel or AUTO_PARALLEL

    @property
    def slots_busy(self) -> int:
        return len(self._running)

    def has_free_slot(self) -> bool:
        """RQ dequeues only while this is true, so the queue length stays the true backlog."""
        return self.slots_busy < self.slots_total

    def wait_for_free_slot(self, timeout: float) -> bool:
        """Block until a sequence slot is free or the timeout passes."""
        if self.has_free_slot():
            return True
        self._slot_freed.wait(timeout)
        self._slot_freed.clear()
        return self.has_free_slot()

    # --- jobs --------------------------------------------------------------------------------------

    def _cancelled(self, job_id: str) -> bool:
        return bool(self.client.exists(cancel_key(job_id)))

    def _resolve(self, raw: str) -> StoredModel:
        return prepare.resolve(self.store, raw)

    def _model_here(self, job: GenerateJob | EmbedJob, func: str) -> bool:
        """Whether this worker's store has the job's model, fetched from the API's store first if needed.

        False when it cannot have it (no HERD_STORE_URL, or the fetch failed) while the API knows the
        model: the job then goes back to the shared queue for another worker, at most MAX_REQUEUES times,
        and after that fails with the reason, never with a 404 for a model the API listed.
        """
        reason = ""
        try:
            if self.fetcher.ensure(job.model):
                self._blobs_scanned = 0.0  # advertise the new blobs
            self._resolve(job.model)
            return True
        except FetchError as exc:
            reason = str(exc)
        except JobError as exc:
            if exc.status != 404 or not self._api_knows(job.model):
                return True  # the job's own error path answers it
            reason = (
                f"model {job.model!r} is not in this worker's store ({self.settings.models_dir}) "
                "and HERD_STORE_URL is not set to fetch it"
            )
        log.warning("model not available here", extra={"request_id": job.request_id, "reason": reason})
        if job.requeues < MAX_REQUEUES and self._requeue(job, func):
            return False
        self._job_publisher.send(job.job_id, "error", status=500, error=reason)
        return False

    def _api_knows(self, raw: str) -> bool:
        try:
            display = ModelName.parse(raw).display
        except InvalidModelName:
            return False
        return bool(self.client.exists(manifest_key(display)))

    def _requeue(self, job: GenerateJob | EmbedJob, func: str) -> bool:
        """Put the job at the head of the shared queue for another worker; False if Redis refused."""
        payload = job.model_copy(update={"requeues": job.requeues + 1}).model_dump(mode="json")
        rq_job = Job.create(
            func,
            kwargs={"payload": payload},
            connection=self.client,
            # Its own RQ id: RQ still finishes the record of this run. A client that leaves meanwhile
            # cannot withdraw it by the job id, so it sets the cancel flag, which every start checks.
            id=f"{job.job_id}-requeue{job.requeues + 1}",
            origin=SHARED_QUEUE,
            timeout=-1,
            result_ttl=JOB_RESULT_TTL_S,
            failure_ttl=JOB_RESULT_TTL_S,
            serializer=JSONSerializer,
        )
        try:
            Queue(SHARED_QUEUE, connection=self.client, serializer=JSONSerializer).enqueue_job(
                rq_job, at_front=True
            )
        except redis.RedisError:
            return False
        log.info("job requeued for another worker", extra={"request_id": job.request_id, "job": job.job_id})
        return True

    def _acquire(
        self, stored: StoredModel, options: dict[str, Any], keep_alive: float | None
    ) -> tuple[LoadedModel, int]:
        """The model held for one job, loaded (with the job's num_ctx and num_parallel) when needed."""
        parallel = options.get("num_parallel")
        try:
            loaded, load_ns = self.cache.acquire(
                stored,
                n_ctx=prepare.num_ctx(stored, options, self.settings.context_length),
                keep_alive=keep_alive,
                n_parallel=int(parallel) if parallel else None,
            )
        except ModelTooLarge as exc:
            raise JobError(500, str(exc)) from exc
        except InvalidKeepAlive as exc:
            raise JobError(400, str(exc)) from exc
        if load_ns:
            try:
                self._advertise()
            except BaseException:
                # Held and not yet handed to the caller: nobody else could ever let it go.
                self.cache.release(loaded)
                raise
        return loaded, load_ns

    def _wait_for_engine_slot(self, loaded: LoadedModel) -> None:
        """A model's own slots can be fewer than the worker's (per-model num_parallel): wait for one."""
        while loaded.engine.free_slots == 0 and not self._stop.is_set():
            self._slot_freed.wait(timeout=0.5)
            self._slot_freed.clear()

    def generate(self, job: GenerateJob) -> None:
        """Prepare a generation and hand it to the decode loop; errors become an error event."""
        if self._cancelled(job.job_id):
            log.info("client left before the job started", extra={"request_id": job.request_id})
            return
        self._job_publisher.send(
            job.job_id, "started", worker=self.settings.worker_id, incarnation=self.incarnation
        )
        log.info("job started", extra={"request_id": job.request_id, "job": job.job_id, "kind": job.kind})
        if not self._model_here(job, JOB_FUNC_GENERATE):
            return
        try:
            self._generate(job)
        except JobError as exc:
            self._job_publisher.send(job.job_id, "error", status=exc.status, error=exc.message)
        except (FormatError, GrammarError, TemplateError) as exc:
            self._job_publisher.send(job.job_id, "error", status=400, error=str(exc))
        except (ModelLoadError, ContextError) as exc:
            log.error("model load failed: %s", exc, extra={"request_id": job.request_id})
            self._job_publisher.send(job.job_id, "error", status=500, error=str(exc))
        except Exception as exc:
            log.exception("job failed", extra={"request_id": job.request_id})
            self._job_publisher.send(job.job_id, "error", status=500, error=f"internal error: {exc}")
            raise

    def _generate(self, job: GenerateJob) -> None:
        stored = self._resolve(job.model)
        options = {**stored.params, **job.options}
        empty = not job.prompt if job.kind == "generate" else not job.messages
        if empty and job.keep_alive == 0:
            self.cache.unload(stored.name.canonical)
            self._advertise()
            self._job_publisher.send(job.job_id, "done", done_reason="unload", load_duration=0)
            return
        grammar = grammar_for_format(job.format)
        loaded, load_ns = self._acquire(stored, options, job.keep_alive)
        try:
            if empty:
                self._job_publisher.send(job.job_id, "done", done_reason="load", load_duration=load_ns)
                self.cache.release(loaded)
                return
            tokens, media = prepare.prompt_input(job, loaded)
            prepare.check_fits(tokens, loaded.n_ctx)
            sampling = prepare.sampling_params(options, grammar)
            num_predict = int(options.get("num_predict", -1))
            stop = options.get("stop") or loaded.template.default_stops
            if num_predict == 0:
                self._job_publisher.send(
                    job.job_id,
                    "done",
                    done_reason="length",
                    load_duration=load_ns,
                    prompt_eval_count=len(tokens),
                    context=tokens if job.kind == "generate" else None,
                )
                self.cache.release(loaded)
                return
            request = SequenceRequest(
                key=job.job_id,
                prompt=tokens,
                sampling=sampling,
                max_tokens=num_predict if num_predict > 0 else None,
                stop=list(stop),
                logprobs=job.logprobs,
                shift=job.shift,
                num_keep=prepare.num_keep(options),
                media=media,
            )
            splitter = prepare.output_splitter(job, loaded, tokens)
            self._wait_for_engine_slot(loaded)
            more_waiting = self._more_jobs_waiting()
            self._running.add(job.job_id, Running(job, loaded, load_ns, splitter))
            try:
                with self.cache.lock:
                    loaded.engine.submit(request)
            except Exception:
                self._running.pop(job.job_id)
                raise
        except BaseException:
            if job.job_id not in self._running:
                self.cache.release(loaded)
            raise
        # After the submit: the last job of a burst releases the first step only once it is in it.
        self._gate.handed_over(more_waiting)
        self._state_dirty.set()
        self._wake.set()

    def embed(self, job: EmbedJob) -> None:
        """Embed every input now (embedding jobs are short and run on the job thread)."""
        if self._cancelled(job.job_id):
            return
        self._job_publisher.send(
            job.job_id, "started", worker=self.settings.worker_id, incarnation=self.incarnation
        )
        log.info("job started", extra={"request_id": job.request_id, "job": job.job_id, "kind": "embed"})
        if not self._model_here(job, JOB_FUNC_EMBED):
            return
        try:
            stored = self._resolve(job.model)
            options = {**stored.params, **job.options}
            loaded, load_ns = self._acquire(stored, options, job.keep_alive)
            try:
                if not job.inputs:
                    result_vectors: list[list[float]] = []
                    count, duration = 0, 0
                else:
                    with self.cache.lock:
                        embedder = loaded.get_embedder(self.settings.threads)
                    # Its own context, outside the lock: generation goes on meanwhile (the job holds the
                    # model, so it is not freed).
                    result = embedder.embed(
                        job.inputs, truncate=job.truncate, normalize=job.normalize, dimensions=job.dimensions
                    )
                    result_vectors, count, duration = result.vectors, result.prompt_tokens, result.duration_ns
            finally:
                self.cache.release(loaded)
            self._job_publisher.send(
                job.job_id,
                "embedding",
                embeddings=result_vectors,
                prompt_eval_count=count,
                load_duration=load_ns,
                duration=duration,
            )
        except JobError as exc:
            self._job_publisher.send(job.job_id, "error", status=exc.status, error=exc.message)
        except InputTooLong as exc:
            self._job_publisher.send(job.job_id, "error", status=400, error=str(exc))
        except (ModelLoadError, ContextError) as exc:
            self._job_publisher.send(job.job_id, "error", status=500, error=str(exc))
        except Exception as exc:
            log.exception("embedding job failed", extra={"request_id": job.request_id})
            self._job_publisher.send(job.job_id, "error", status=500, error=f"internal error: {exc}")
            raise

    # --- advertised state --------------------------------------------------------------------------

    def _state_changed(self) -> None:
        self._state_dirty.set()

    def state(self) -> WorkerState:
        return WorkerState(
            worker_id=self.settings.worker_id,
            pid=os.getpid(),
            device=self.settings.device,
            incarnation=self.incarnation,
            queue=self.queue_name,
            slots_total=self.slots_total,
            slots_busy=self.slots_busy,
            models=self.cache.states(),
            loads=self.cache.loads,
            max_loaded=self.cache.max_loaded,
            memory_budget=self.cache.memory_budget(),
            memory_used=self.cache.memory_used,
            context_length=self.settings.context_length,
            num_parallel=self.settings.num_parallel,
            heartbeat_at=time.time(),
            running=self._running.ids(),
            blobs=self._store_blobs(),
        )

    def _store_blobs(self) -> list[str]:
        now = time.monotonic()
        if now - self._blobs_scanned >= _BLOB_SCAN_S:
            self._blobs_scanned = now
            self._blobs = store_blobs(self.store)
        return self._blobs

    def publish_state(self) -> None:
        """Write this worker's state with a TTL of three heartbeats."""
        ttl_ms = int(self.settings.heartbeat_s * 3000)
        self.metrics.set_residency(self.cache.residency())
        doc = self.state().model_dump_json()
        pipe = self.client.pipeline(transaction=False)
        pipe.set(worker_state_key(self.settings.worker_id), doc, px=ttl_ms)
        # Without a TTL: once the state expires, the sweeper (app/sweeper.py) reads the running jobs here.
        pipe.set(worker_last_key(self.settings.worker_id), doc)
        if not self.draining:
            # Back in placement after the sweeper took this worker for dead (Redis was out of reach).
            pipe.sadd(WORKERS_SET, self.settings.worker_id)
        pipe.execute()

    def _advertise(self) -> None:
        """publish_state, for the heartbeat and for a job that just loaded or unloaded a model.

        Never under the cache lock: liveness must not wait for a (slow) decode step. A job publishes its
        load or unload itself, before its answer, so that a client's next /api/ps already shows it (the
        heartbeat would a moment later: too late for `ollama ps` run at once). A Redis outage is logged.
        """
        try:
            self.publish_state()
        except redis.RedisError:
            log.warning("publishing the worker's state failed: Redis unreachable")

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            self._state_dirty.wait(timeout=self.settings.heartbeat_s)
            self._state_dirty.clear()
            if self._stop.is_set():
                break
            self._advertise()
