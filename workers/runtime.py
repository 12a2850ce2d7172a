"""A worker's runtime: prepares jobs, runs the decode loop, and advertises its state in Redis.

Threads: RQ's loop runs job functions on the main thread (prepare: resolve, load, render, tokenize,
submit); one decode thread steps every busy engine and publishes tokens; one heartbeat thread keeps
this worker's state key alive. Models are only ever freed under the cache lock, which the decode
thread holds around each step. The decode and heartbeat threads are vital (workers/watchdog.py): if
either dies the process ends, and the supervisor restarts it as a new incarnation.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from herd.contracts import (
    QUEUE_KEYS_SET,
    SHARED_QUEUE,
    WORKERS_SET,
    EmbedJob,
    GenerateJob,
    ToolCall,
    WorkerState,
    cancel_key,
    rq_queue_key,
    worker_queue_name,
    worker_state_key,
)
from herd.durations import parse_keep_alive
from herd.gguf_meta import GGUFError
from herd.memory import cap_num_ctx
from herd.names import InvalidModelName, ModelName
from herd.store import ModelNotFound, ModelStore, StoredModel
from herd.templates.builtin import choose_template
from herd.templates.chat import TemplateError, generate_messages, render_chat
from herd.templates.tool_calls import ToolCallParser, tool_call_tag
from workers.cache import AUTO_PARALLEL, InvalidKeepAlive, LoadedModel, ModelCache, ModelTooLarge
from workers.embedder import InputTooLong
from workers.engine import ContextError, DoneEvent, SequenceRequest, TokenEvent
from workers.grammar import FormatError, grammar_for_format
from workers.llama import LlamaModel, ModelLoadError, TokenOutOfRange
from workers.metrics import WorkerMetrics
from workers.publisher import Publisher
from workers.sampling import GrammarError, SamplingParams
from workers.settings import WorkerSettings
from workers.watchdog import VitalThreads, die

log = logging.getLogger(__name__)

_SAMPLING_KEYS = {f for f in SamplingParams.__dataclass_fields__ if f != "grammar"}

# KEYS: this worker's queue, the shared queue, the set of queue keys. ARGV: the shared queue's name.
# Moves every job still waiting here to the head of the shared queue, oldest first, in one atomic step,
# so no job is ever in neither list (or in both); their RQ origin follows them.
_REQUEUE = """
local moved = 0
redis.call('SADD', KEYS[3], KEYS[2])
while true do
  local id = redis.call('RPOP', KEYS[1])
  if not id then break end
  local job = 'rq:job:' .. id
  if redis.call('EXISTS', job) == 1 then
    redis.call('HSET', job, 'origin', ARGV[1])
  end
  redis.call('LPUSH', KEYS[2], id)
  moved = moved + 1
end
return moved
"""
# Poll interval of the drain's wait for running sequences.
_DRAIN_POLL_S = 0.05
# After the drain, how long the decode loop gets to end the rest (one step) before the worker does.
_SHUTDOWN_STEP_S = 10.0


class JobError(Exception):
    """A job that cannot run, with the HTTP status the API should answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _check_context(context: list[int], model: LlamaModel) -> None:
    """A client's `context` may hold only the model's own token ids: a 400 names the first that is not."""
    try:
        model.check_tokens(context, "context")
    except TokenOutOfRange as exc:
        raise JobError(400, str(exc)) from exc


@dataclass
class _Running:
    job: GenerateJob
    loaded: LoadedModel
    load_ns: int
    tool_calls: ToolCallParser | None = None  # set when the request offered tools


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
        self._running: dict[str, _Running] = {}
        self._running_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Set by SIGTERM (nothing but flags: a signal handler must not touch Redis); a second cuts the drain.
        self._draining = threading.Event()
        self._drain_cut = threading.Event()
        # When the first SIGTERM came and how many sequences ran then: the drain counts from there.
        self._drain_requested_at: float | None = None
        self._running_at_drain = 0
        # Jobs the drain ran out of time for, with their error: the decode loop ends them with it.
        self._shutdown_errors: dict[str, str] = {}
        self._state_dirty = threading.Event()
        self._slot_freed = threading.Event()
        self._job_publisher = Publisher(client)  # main thread only
        self._loop_publisher = Publisher(client)  # decode thread only
        self._threads = VitalThreads(self._stop, on_thread_death)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Register this worker and start the decode and heartbeat threads."""
        self.client.sadd(WORKERS_SET, self.settings.worker_id)
        self.client.sadd(QUEUE_KEYS_SET, rq_queue_key(self.queue_name))
        self.publish_state()
        self._threads.start(self._decode_loop, "decode")
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
            pipe.srem(WORKERS_SET, self.settings.worker_id)
            pipe.execute()
        except redis.RedisError:
            log.warning("could not withdraw worker state from Redis")

    def request_drain(self) -> None:
        """Stop taking jobs (from a signal handler); asked again, fail running sequences at once."""
        if self._draining.is_set():
            self._drain_cut.set()
        else:
            self._drain_requested_at = time.monotonic()
            self._running_at_drain = len(self._running)  # no lock in a signal handler; len() is atomic
        self._draining.set()
        self._slot_freed.set()  # wakes the dequeue loop, which then sees the drain

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def requeue_waiting(self) -> int:
        """Hand the jobs still waiting in this worker's own queue to the shared queue; returns how many."""
        keys = [rq_queue_key(self.queue_name), rq_queue_key(SHARED_QUEUE), QUEUE_KEYS_SET]
        return int(self.client.eval(_REQUEUE, len(keys), *keys, SHARED_QUEUE))

    def drain(self, timeout: float) -> int:
        """Let running sequences finish for up to `timeout` seconds, then fail the rest; returns how many failed.

        The worker leaves placement first (no API sends it new jobs) but keeps its heartbeat, by which the
        API tells a draining worker from a dead one. Jobs waiting in its own queue go to the shared queue.
        """
        if self._drain_requested_at is None:  # not request_drain(): after a SIGTERM that is a second one
            self._drain_requested_at = time.monotonic()
            self._running_at_drain = self.slots_busy
        self._draining.set()
        started = self._drain_requested_at
        try:
            self.client.srem(WORKERS_SET, self.settings.worker_id)
            moved = self.requeue_waiting()
        except redis.RedisError:
            log.warning("could not leave placement or requeue waiting jobs: Redis unreachable")
            moved = 0
        running = self._running_at_drain
        log.info(
            "draining",
            extra={
                "worker": self.settings.worker_id,
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
        with self._running_lock:
            left = dict(self._running)
            self._shutdown_errors.update(dict.fromkeys(left, message))
        with self.cache.lock:
            for job_id, entry in left.items():
                entry.loaded.engine.cancel(job_id)
        self._wake.set()
        # The decode loop ends them at its next step, sending the error after their last token (_finish);
        # the heartbeat goes on meanwhile, so the API never takes this worker for dead.
        self._wait_idle(time.monotonic() + _SHUTDOWN_STEP_S, cut=False)
        with self._running_lock:
            stuck, self._running = list(self._running.values()), {}
        # Still listed: finished on their own at that last step (or stuck); the rest got the error.
        failed = len(left) - sum(job_id in self._shutdown_errors for job_id in left) + len(stuck)
        for entry in stuck:  # the decode loop is wedged: fail them from here
            try:
                self._job_publisher.send(entry.job.job_id, "error", status=503, error=message)
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
                "worker": self.settings.worker_id,
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
        while self.slots_busy and time.monotonic() < deadline and not (cut and self._drain_cut.is_set()):
            time.sleep(_DRAIN_POLL_S)

    # --- slots -------------------------------------------------------------------------------------

    @property
    def slots_total(self) -> int:
        """Jobs this worker runs at once: OLLAMA_NUM_PARALLEL, or the automatic choice's upper bound."""
        return self.settings.num_parallel or AUTO_PARALLEL

    @property
    def slots_busy(self) -> int:
        with self._running_lock:
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
        try:
            return self.store.get(ModelName.parse(raw), raw=raw)
        except InvalidModelName as exc:
            raise JobError(400, str(exc)) from exc
        except ModelNotFound as exc:
            raise JobError(404, str(exc)) from exc

    def _n_ctx(self, stored: StoredModel, options: dict[str, Any]) -> int:
        """The job's num_ctx (request, Modelfile or OLLAMA_CONTEXT_LENGTH), capped at the trained context."""
        asked = options.get("num_ctx")
        wanted = int(asked or self.settings.context_length)
        try:
            info = stored.gguf_info()
        except (OSError, GGUFError):
            return wanted  # the cache's estimate reads the same header and reports why it cannot
        n_ctx = cap_num_ctx(info, wanted)
        if n_ctx < wanted:
            # Ollama's line (llm/server.go). The server's own default beyond a small model's context is
            # routine, so only a request's or a Modelfile's num_ctx is worth a warning.
            log.log(
                logging.WARNING if asked else logging.DEBUG,
                "requested context size too large for model",
                extra={"model": stored.name.display, "num_ctx": wanted, "n_ctx_train": n_ctx},
            )
        return n_ctx

    def _acquire(
        self, stored: StoredModel, options: dict[str, Any], keep_alive: float | None
    ) -> tuple[LoadedModel, int]:
        """The model held for one job, loaded (with the job's num_ctx and num_parallel) when needed."""
        parallel = options.get("num_parallel")
        try:
            loaded, load_ns = self.cache.acquire(
                stored,
                n_ctx=self._n_ctx(stored, options),
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
            tokens = self._prompt_tokens(job, loaded, options)
            if len(tokens) >= loaded.n_ctx:
                raise JobError(
                    400,
                    f"prompt is too long: {len(tokens)} tokens do not fit the context window "
                    f"(num_ctx {loaded.n_ctx}); shorten the prompt or raise num_ctx",
                )
            sampling = SamplingParams(
                **{k: options[k] for k in _SAMPLING_KEYS if options.get(k) is not None}, grammar=grammar
            )
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
            )
            parser = self._tool_call_parser(job, loaded)
            self._wait_for_engine_slot(loaded)
            with self._running_lock:
                self._running[job.job_id] = _Running(job, loaded, load_ns, parser)
            try:
                with self.cache.lock:
                    loaded.engine.submit(request)
            except Exception:
                with self._running_lock:
                    self._running.pop(job.job_id, None)
                raise
        except BaseException:
            if job.job_id not in self._running:
                self.cache.release(loaded)
            raise
        self._state_dirty.set()
        self._wake.set()

    def _tool_call_parser(self, job: GenerateJob, loaded: LoadedModel) -> ToolCallParser | None:
        """A parser for the calls a chat with tools may produce, in the shape the template renders them."""
        if job.kind != "chat" or not job.tools:
            return None
        names = {
            str(tool["function"]["name"])
            for tool in job.tools
            if isinstance(tool.get("function"), dict) and tool["function"].get("name")
        }
        if loaded.tool_call_tag is None:
            bos = (
                loaded.llama.piece(loaded.llama.bos).decode(errors="replace") if loaded.llama.bos >= 0 else ""
            )
            try:
                tag = tool_call_tag(
                    lambda msgs: render_chat(loaded.template, msgs, tools=job.tools, bos_token=bos)
                )
            except TemplateError:
                tag = None
            # A template that renders tools but no calls: the model answers with bare JSON at best.
            loaded.tool_call_tag = tag if tag is not None else ""
        return ToolCallParser(loaded.tool_call_tag, names)

    def _prompt_tokens(self, job: GenerateJob, loaded: LoadedModel, options: dict[str, Any]) -> list[int]:
        model = loaded.llama
        stored = loaded.stored
        if job.kind == "generate" and job.context:
            _check_context(job.context, model)
        if job.kind == "generate" and job.raw:
            return [*(job.context or []), *model.tokenize(job.prompt or "", add_special=not job.context)]
        template = loaded.template
        if job.kind == "generate" and job.template:
            template = choose_template(
                request_template=job.template, layer=None, gguf_template=None, architecture=""
            )
        if job.suffix and not template.supports_suffix:
            raise JobError(400, f"{stored.name.display} does not support insert")
        if job.kind == "generate":
            messages = generate_messages(job.prompt or "", job.system or stored.system)
        else:
            messages = list(job.messages or [])
            if stored.system and not any(m.role == "system" for m in messages):
                messages.insert(0, generate_messages("", stored.system)[0])
        bos = model.piece(model.bos).decode("utf-8", errors="replace") if model.bos >= 0 else ""
        text = render_chat(template, messages, tools=job.tools, suffix=job.suffix or "", bos_token=bos)
        if job.kind == "generate" and job.context:
            return [*job.context, *model.tokenize(text, add_special=False)]
        return model.tokenize(text, add_special=True)

    def embed(self, job: EmbedJob) -> None:
        """Embed every input now (embedding jobs are short and run on the job thread)."""
        if self._cancelled(job.job_id):
            return
        self._job_publisher.send(
            job.job_id, "started", worker=self.settings.worker_id, incarnation=self.incarnation
        )
        log.info("job started", extra={"request_id": job.request_id, "job": job.job_id, "kind": "embed"})
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
                        result = embedder.embed(
                            job.inputs,
                            truncate=job.truncate,
                            normalize=job.normalize,
                            dimensions=job.dimensions,
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

    # --- decode loop -------------------------------------------------------------------------------

    def _decode_loop(self) -> None:
        last_expire = 0.0
        while not self._stop.is_set():
            engines = self.cache.busy_engines()
            if not engines:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
            else:
                try:
                    self._step(engines)
                except redis.RedisError:
                    # Redis is down: the API fails these requests; keep decoding what can still be sent.
                    log.exception("could not publish events")
                    time.sleep(0.2)
            now = time.monotonic()
            if now - last_expire >= 1.0:
                last_expire = now
                self.cache.expire()

    def _step(self, engines: list[Any]) -> None:
        publisher = self._loop_publisher
        finished: list[_Running] = []
        with self.cache.lock:
            for engine in engines:
                for event in engine.step():
                    if isinstance(event, TokenEvent):
                        self._publish_text(event)
                    elif isinstance(event, DoneEvent):
                        running = self._finish(event)
                        if running is not None:
                            finished.append(running)
        with self._running_lock:
            watch = list(self._running)
        try:
            cancelled = publisher.flush(watch=watch)
        finally:
            # Finished sequences give their slots back even when Redis just failed the flush: a slot
            # kept busy here would never be freed.
            for running in finished:
                self.cache.release(running.loaded)
            if finished:
                self._slot_freed.set()
                self._state_dirty.set()
        if cancelled:
            with self.cache.lock:
                for job_id in cancelled:
                    with self._running_lock:
                        running = self._running.get(job_id)
                    if running is not None:
                        running.loaded.engine.cancel(job_id)

    def _publish_text(self, event: TokenEvent) -> None:
        """A token event, with any tool calls split off the text first (decode thread)."""
        with self._running_lock:
            running = self._running.get(event.key)
        text = event.text
        calls: list[ToolCall] = []
        if running is not None and running.tool_calls is not None:
            text, calls = running.tool_calls.feed(text)
        self._send_text(event.key, text, event.logprobs, calls)

    def _send_text(
        self, key: str, text: str, logprobs: list[dict[str, Any]] | None, calls: list[ToolCall]
    ) -> None:
        if text or logprobs:
            fields: dict[str, Any] = {"text": text}
            if logprobs:
                fields["logprobs"] = logprobs
            self._loop_publisher.add(key, "token", **fields)
        for call in calls:
            self._loop_publisher.add(key, "tool_call", call=call.model_dump())

    def _finish(self, event: DoneEvent) -> _Running | None:
        with self._running_lock:
            running = self._running.pop(event.key, None)
        if running is None:
            return None
        if running.tool_calls is not None and event.reason in ("stop", "length"):
            text, calls = running.tool_calls.finish()
            self._send_text(event.key, text, None, calls)
        log.info(
            "job finished",
            extra={
                "request_id": running.job.request_id,
                "job": event.key,
                "reason": event.reason,
                "prompt_tokens": event.prompt_tokens,
                "tokens": event.eval_tokens,
            },
        )
        if event.reason == "error":
            self._loop_publisher.add(event.key, "error", status=500, error=event.error or "decode failed")
        elif event.reason == "cancel" and event.key in self._shutdown_errors:
            message = self._shutdown_errors.pop(event.key)
            self._loop_publisher.add(event.key, "error", status=503, error=message)
        elif event.reason != "cancel":
            self._loop_publisher.add(
                event.key,
                "done",
                done_reason=event.reason,
                load_duration=running.load_ns,
                prompt_eval_count=event.prompt_tokens,
                prompt_eval_duration=event.prompt_ns,
                eval_count=event.eval_tokens,
                eval_duration=event.eval_ns,
                context=event.tokens if running.job.kind == "generate" else None,
            )
        else:
            log.info("generation cancelled by its client", extra={"request_id": running.job.request_id})
        return running

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
        )

    def publish_state(self) -> None:
        """Write this worker's state with a TTL of three heartbeats."""
        ttl_ms = int(self.settings.heartbeat_s * 3000)
        self.metrics.set_residency(self.cache.residency())
        self.client.set(worker_state_key(self.settings.worker_id), self.state().model_dump_json(), px=ttl_ms)

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
