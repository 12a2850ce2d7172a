"""The decode thread: steps every busy engine, publishes its tokens and ends the sequences that finish.

Models are only ever freed under the cache lock, which this thread holds around each step.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from herd.templates.output_split import Split
from workers.cache import ModelCache
from workers.engine import DoneEvent, TokenEvent
from workers.publisher import Publisher
from workers.running import Running, RunningJobs

log = logging.getLogger(__name__)


class DecodeLoop:
    """One worker's decode thread (`run`), with the events it shares with the job thread."""

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
    ):
        self._cache = cache
        self._running = running
        self._publisher = publisher  # this thread's own
        self._stop = stop
        self._wake = wake
        self._slot_freed = slot_freed
        self._state_dirty = state_dirty

    def run(self) -> None:
        """Step busy engines until stopped; sleep on `wake` while none is busy; expire idle models."""
        last_expire = 0.0
        while not self._stop.is_set():
            engines = self._cache.busy_engines()
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
                self._cache.expire()

    def _step(self, engines: list[Any]) -> None:
        publisher = self._publisher
        finished: list[Running] = []
        with self._cache.lock:
            for engine in engines:
                for event in engine.step():
                    if isinstance(event, TokenEvent):
                        self._publish_text(event)
                    elif isinstance(event, DoneEvent):
                        running = self._finish(event)
                        if running is not None:
                            finished.append(running)
        watch = self._running.ids()
        try:
            cancelled = publisher.flush(watch=watch)
        finally:
            # Finished sequences give their slots back even when Redis just failed the flush: a slot
            # kept busy here would never be freed.
            for running in finished:
                self._cache.release(running.loaded)
            if finished:
                self._slot_freed.set()
                self._state_dirty.set()
        if cancelled:
            with self._cache.lock:
                for job_id in cancelled:
                    found = self._running.get(job_id)
                    if found is not None:
                        found.loaded.engine.cancel(job_id)

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
