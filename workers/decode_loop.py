"""The decode thread steps every busy engine; what the steps produced is published to Redis after each.

Publishing (tool-call and thinking parsing, logging, and the Redis round trip: each step's events in one
pipeline, which also reads the running jobs' cancel flags) runs in one of two places:

- **A publishing thread** (the default): the decode thread does nothing but `engine.step()` and a queue
  put, so the next llama_decode starts as soon as the last one ended and the publishing runs meanwhile,
  on a core the decode threads leave free (a GPU worker's, or a CPU worker with cores to spare).
- **On the decode thread, between steps** (`inline`), when llama.cpp's threads take every core the
  process may use (a CPU worker with HERD_THREADS at the core count). There a publishing thread has no
  core of its own: each wake-up preempts a decode thread mid-step, and ggml's other threads wait for it
  at their next barrier. Between steps only the decode thread works while ggml's others spin, and it
  sends the step's commands without waiting for Redis's answer (Publisher.post): the answers, with the
  cancel flags, are read at the next step boundary after they arrive (Publisher.collect). The flags
  are read with each send, and every POLL_S when nothing was sent, not at every step.

Either way, the events of a step or a few are sent together: a sequence's first output and its end at
once, its tokens at most HERD_STREAM_INTERVAL_MS later (workers/stream_pacer.py).

It also ends the jobs that finished, giving their model back to the cache; the idle models'
expiry runs on a housekeeping thread of its own once a second (it takes the cache lock, which a load may
hold, so never on the decode thread).

No lock is held across a decode step: admission (engine.submit), cancellation (engine.cancel), /api/ps
and the heartbeat never wait for one. A model is never freed while stepped: an engine with running
sequences belongs to a model whose jobs hold it (the cache frees idle models only), and the jobs are
released here only after their last step; engine.close() waits for a step in progress.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

import redis

from herd.templates.output_split import Split
from workers.cache import ModelCache
from workers.engine_io import DoneEvent, Event, TokenEvent
from workers.publisher import Publisher
from workers.running import Running, RunningJobs
from workers.start_gate import StartGate
from workers.stream_pacer import StreamPacer

log = logging.getLogger(__name__)

# How often the publishing reads the cancel flags at the least: with every send, and this long after the
# last one when nothing was sent (a long prompt chunk, a model still prefilling, tokens the pacer holds).
# Each read wakes Redis, which on a CPU worker runs on the decode threads' cores: at one stream a read
# at every step was one more Redis wake-up per token; read with the sends instead, Redis's CPU per token
# at one stream went from 0.18 to 0.11 ms. A client that left is noticed within this, a step or two, and
# the API's own notice.
POLL_S = 0.1
# How often idle models are expired (their keep_alive ran out).
_EXPIRE_EVERY_S = 1.0


def decode_threads_take_every_core(threads: int, gpu_offload: bool) -> bool:
    """Whether llama.cpp's decode threads leave no core of this process's for a publishing thread."""
    if gpu_offload:
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return threads >= cores


class DecodeLoop:
    """One worker's decode thread (`run`) and its publishing thread, with the events they share."""

    def __init__(
        self,
        cache: ModelCache,
        running: RunningJobs,
        publisher: Publisher,
        *,
        stop: threading.Event,
        wake: threading.Event,
        slot_freed: threading.Event,
        state_dirty: threading.Event,
        gate: StartGate | None = None,
        pacer: StreamPacer | None = None,
        inline: bool = False,
    ):
        self._cache = cache
        self._running = running
        self._publisher = publisher  # the publishing's own (one thread uses it)
        self._inline = inline
        self._stop = stop
        self._wake = wake
        self._slot_freed = slot_freed
        self._state_dirty = state_dirty
        self._gate = gate or StartGate()
        self._pacer = pacer or StreamPacer(0.0)  # the publishing's own
        # True from an idle spell until the first step after it: jobs handed over now start that step.
        self.idle = True
        # Each step's events, in step order; None tells the publishing thread to end.
        self._outbox: queue.SimpleQueue[list[Event] | None] = queue.SimpleQueue()

    def run(self) -> None:
        """Step busy engines until stopped; sleep on `wake` while none is busy.

        Starts the publishing (or housekeeping) thread and ends (raising) if it died: both are vital.
        """
        helper = threading.Thread(
            target=self._housekeeping_loop if self._inline else self._publish_loop,
            name="housekeeping" if self._inline else "publish",
            daemon=True,
        )
        helper.start()
        log.info(
            "decode loop started",
            extra={"publishing": "on the decode thread" if self._inline else "on its own thread"},
        )
        try:
            self._step_until_stopped(helper)
        finally:
            self._outbox.put(None)
            helper.join(timeout=5)

    def _step_until_stopped(self, helper: threading.Thread) -> None:
        polled = 0.0  # when the inline publishing last sent (or polled the cancel flags)
        held: list[Event] = []  # inline: events not sent yet (the pacer holds tokens)
        step_s = 0.0  # how long the last step took
        while not self._stop.is_set():
            if not helper.is_alive():
                raise RuntimeError(f"the {helper.name} thread died")
            engines = self._cache.busy_engines()
            if not engines:
                self.idle = True
                # Inline, nothing stepped still polls: a job still preparing (rendering, loading) may be
                # cancelled. The publishing thread polls on its own.
                self._wake.wait(timeout=POLL_S if self._inline else 0.5)
                self._wake.clear()
            elif self.idle:
                # The first step after idle: a burst's other jobs, already queued, join it (start_gate.py).
                if self._gate.wait(self._stop) > 0.001:
                    engines = self._cache.busy_engines()
                self.idle = False
            started = time.monotonic()
            events: list[Event] = []
            for engine in engines:
                events += engine.step()
            now = time.monotonic()
            if engines:
                step_s = now - started
            if not self._inline:
                if events:
                    self._outbox.put(events)
                continue
            held += events
            if held and self._pacer.due(events, now, step_s):
                self._pacer.sent(now)
                polled = now
                self._send(held)
                held = []
            elif now - polled >= POLL_S:
                # Only the cancel flags (one MGET, nothing that wakes the API).
                polled = now
                self._send([])
            else:
                self._collect()  # the last send's answer, read as soon as it is in: no command sent
        if held:
            self._send(held)  # a stop in mid-stream: what was generated still reaches its client

    def _housekeeping_loop(self) -> None:
        """Expire idle models once a second until the decode loop ends (inline publishing)."""
        while not self._stop.wait(_EXPIRE_EVERY_S):
            self._cache.expire()

    def _publish_loop(self) -> None:
        """Send the steps' events as they come (all that waited in one round trip, tokens paced); end on
        None.

        Also expires idle models, once a second: that takes the cache lock, which a load may hold.
        """
        last_expire = 0.0
        held: list[Event] = []
        while True:
            now = time.monotonic()
            if now - last_expire >= _EXPIRE_EVERY_S:
                last_expire = now
                self._cache.expire()
            try:
                first = self._outbox.get(timeout=self._pacer.wait_s(now) if held else POLL_S)
            except queue.Empty:
                first = []
            batches = [first]
            while True:
                try:
                    batches.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            ending = any(b is None for b in batches)
            new = [e for b in batches if b is not None for e in b]
            held += new
            now = time.monotonic()
            # Nothing held: a poll of the cancel flags (jobs still preparing may have been cancelled).
            if self._pacer.due(new, now) or ending or not held:
                self._pacer.sent(now)
                self._send(held)
                held = []
            elif new:
                self._send([])  # tokens held: still the cancel flags at every step
            if ending:
                return

    def _send(self, events: list[Event]) -> None:
        try:
            self._publish(events)
        except redis.RedisError:
            # Redis is down: the API fails these requests; keep decoding what can still be sent.
            log.exception("could not publish events")
            time.sleep(0.2)

    def _collect(self) -> None:
        try:
            self._cancel(self._publisher.collect())
        except redis.RedisError:
            log.exception("could not read the cancel flags")

    def _cancel(self, cancelled: set[str]) -> None:
        """Stop the sequences whose clients left (their engines drop them at the next step)."""
        for job_id in cancelled:
            found = self._running.get(job_id)
            if found is not None:
                found.loaded.engine.cancel(job_id)
        if cancelled:
            self._wake.set()

    def _publish(self, events: list[Event]) -> None:
        publisher = self._publisher
        finished: list[Running] = []
        for event in events:
            if isinstance(event, TokenEvent):
                self._publish_text(event)
            else:
                running = self._finish(event)
                if running is not None:
                    finished.append(running)
        watch = self._running.ids()
        try:
            # Inline, the decode thread does not wait for Redis: cancel flags come from an earlier step's answer.
            cancelled = publisher.post(watch) if self._inline else publisher.flush(watch=watch)
        finally:
            # Finished sequences give their slots back even when Redis just failed the flush: a slot
            # kept busy here would never be freed.
            for running in finished:
                self._cache.release(running.loaded)
            if finished:
                self._slot_freed.set()
                self._state_dirty.set()
        self._cancel(cancelled)

    def _publish_text(self, event: TokenEvent) -> None:
        """A token event, with any thinking and tool calls split off the text first."""
        running = self._running.get(event.key)
        if running is None or running.output is None:
            self._send_text(event.key, Split(content=event.text), event.logprobs)
            return
        self._send_text(event.key, running.output.feed(event.text), event.logprobs)

    def _send_text(self, key: str, split: Split, logprobs: list[dict[str, Any]] | None) -> None:
        if split.thinking:
            self._publisher.add(key, "thinking", text=split.thinking)
        text, calls = split.content, split.calls
        if text or logprobs:
            fields: dict[str, Any] = {"text": text}
            if logprobs:
                fields["logprobs"] = logprobs
            self._publisher.add(key, "token", **fields)
        for call in calls:
            self._publisher.add(key, "tool_call", call=call.model_dump())

    def _finish(self, event: DoneEvent) -> Running | None:
        running = self._running.pop(event.key)
        if running is None:
            return None
        if running.output is not None and event.reason in ("stop", "length"):
            self._send_text(event.key, running.output.finish(), None)
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
            self._publisher.add(event.key, "error", status=500, error=event.error or "decode failed")
        elif (
            event.reason == "cancel" and (message := self._running.pop_shutdown_error(event.key)) is not None
        ):
            self._publisher.add(event.key, "error", status=503, error=message)
        elif event.reason != "cancel":
            self._publisher.add(
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
