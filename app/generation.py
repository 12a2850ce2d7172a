"""Running one generation for a route: admit the job, wait for its first event, then relay as NDJSON.

The HTTP status is decided by the first event: an error before any token is answered with its own
status (400, 404, 500) like Ollama does, and only once a token (or the final chunk) exists does a 200
stream begin. An error after that ends the stream with an `{"error": ...}` line.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app import metrics
from app.errors import ServerBusy, error_response
from app.job_follower import JobFollower, ndjson
from app.services import Services, new_job_id, now_ns, request_id
from herd.contracts import JOB_FUNC_GENERATE, ChatMessage, GenerateJob
from herd.store import StoredModel

log = logging.getLogger(__name__)

Kind = Literal["generate", "chat"]
_STATS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def created_at() -> str:
    """RFC 3339 with nanosecond-style precision and Z, as Ollama writes created_at."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def chunk(
    kind: Kind,
    model: str,
    text: str,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    thinking: str = "",
) -> dict[str, Any]:
    """One streamed piece of output: text, thinking, whole tool calls, and log probabilities when asked for."""
    body: dict[str, Any] = {"model": model, "created_at": created_at()}
    if kind == "generate":
        body["response"] = text
        if thinking:
            body["thinking"] = thinking
    else:
        body["message"] = {"role": "assistant", "content": text}
        if thinking:
            body["message"]["thinking"] = thinking
        if tool_calls:
            body["message"]["tool_calls"] = tool_calls
    body["done"] = False
    if logprobs:
        body["logprobs"] = logprobs
    return body


def final_chunk(
    kind: Kind,
    model: str,
    event: dict[str, Any],
    text: str,
    total_ns: int,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    thinking: str = "",
) -> dict[str, Any]:
    """The closing object: done_reason and the timing statistics."""
    body = chunk(kind, model, text, tool_calls=tool_calls, logprobs=logprobs, thinking=thinking)
    body["done"] = True
    body["done_reason"] = event.get("done_reason", "stop")
    if body["done_reason"] in ("load", "unload"):
        return body
    if kind == "generate" and event.get("context") is not None:
        body["context"] = event["context"]
    stats = {**event, "total_duration": total_ns}
    for key in _STATS:
        body[key] = int(stats.get(key) or 0)
    return body


def chat_job(
    request: Request,
    stored: StoredModel,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]] | None,
    think: bool | str | None,
    format: str | dict[str, Any] | None,
    options: dict[str, Any],
    logprobs: int | None = None,
) -> GenerateJob:
    """The /api/chat job that an OpenAI or Anthropic request becomes, admitted now."""
    return GenerateJob(
        job_id=new_job_id(),
        request_id=request_id(request),
        kind="chat",
        model=stored.name.canonical,
        messages=messages,
        tools=tools,
        think=think,
        format=format,
        options=options,
        logprobs=logprobs,
        admitted_ns=now_ns(),
    )


class Generation(JobFollower):
    """One admitted generation job and the relay of its events to the client."""

    def __init__(self, services: Services, request: Request, job: GenerateJob, display_model: str):
        super().__init__(services, request, job.job_id, job.request_id)
        self.job = job
        self.model = display_model
        self._first_token_seen = False
        self._model_label = metrics.model_label(job.model)
        metrics.note_model(request, job.model)
        # What a non-streaming answer gathers besides its text.
        self.tool_calls: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] = []
        self.thinking: list[str] = []

    async def admit(self, queue: str) -> None:
        await self.services.admission.admit(JOB_FUNC_GENERATE, self.job, queue)
        self.follow()

    async def withdraw(self) -> bool:
        return await self.services.admission.withdraw(self.job_id)

    def describe(self) -> str:
        return f"the {self.job.kind} on {self.model}"

    def observe(self, event: dict[str, Any]) -> None:
        # Every event of every response shape passes through here, so timing is taken once.
        if event["type"] in ("token", "thinking", "tool_call") and not self._first_token_seen:
            self._first_token_seen = True
            metrics.observe_first_token(self._model_label, self.job.admitted_ns)
        elif event["type"] in ("done", "error"):
            metrics.observe_end(self.request.url.path, self._model_label, self.job.admitted_ns, event)

    def _total_ns(self) -> int:
        return max(time.time_ns() - self.job.admitted_ns, 0)

    # --- what differs between the native API and /v1 (OpenAIGeneration overrides these) --------------

    def error(self, status: int, message: str) -> Response:
        """An error answered before any output: Ollama's `{"error": ...}`."""
        return error_response(status, message, self.error_headers(status))

    def complete(self, text: str, event: dict[str, Any]) -> Response:
        """The whole answer of a non-streaming request."""
        return JSONResponse(
            final_chunk(
                self.job.kind,
                self.model,
                event,
                text,
                self._total_ns(),
                tool_calls=self.tool_calls,
                logprobs=self.logprobs,
                thinking="".join(self.thinking),
            )
        )

    def stream(self, first: dict[str, Any]) -> Response:
        """The streaming answer, starting with the first event."""
        return StreamingResponse(self.relay(first, self._ndjson_lines), media_type="application/x-ndjson")

    def _ndjson_lines(self, event: dict[str, Any]) -> list[bytes]:
        kind = self.job.kind
        if event["type"] == "token":
            return [ndjson(chunk(kind, self.model, event["text"], logprobs=event.get("logprobs")))]
        if event["type"] == "thinking":
            return [ndjson(chunk(kind, self.model, "", thinking=event["text"]))]
        if event["type"] == "tool_call":
            return [ndjson(chunk(kind, self.model, "", tool_calls=[event["call"]]))]
        if event["type"] == "done":
            return [ndjson(final_chunk(kind, self.model, event, "", self._total_ns()))]
        return [ndjson({"error": str(event.get("error", "generation failed"))})]

    # --- shared ------------------------------------------------------------------------------------

    async def respond(self, stream: bool) -> Response:
        """The HTTP response: the first event decides the status; then one object, or a stream."""
        first = await self.first_event()
        if first is None:
            return Response(status_code=499)
        if first["type"] == "error":
            return self.error(int(first.get("status", 500)), str(first.get("error")))
        if stream:
            return self.stream(first)
        text, event = await self.gather(first)
        if event["type"] == "gone":
            return Response(status_code=499)
        if event["type"] == "error":
            return self.error(int(event.get("status", 500)), str(event.get("error")))
        return self.complete(text, event)

    async def gather(self, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The text up to the terminal event (done, error, or "gone" when the client left), and that event."""
        parts: list[str] = []

        def take(event: dict[str, Any]) -> None:
            if event["type"] == "token":
                parts.append(event["text"])
                self.logprobs.extend(event.get("logprobs") or ())
            elif event["type"] == "thinking":
                self.thinking.append(event["text"])
            else:
                self.tool_calls.append(event["call"])

        end = await self.collect(event, take)
        return "".join(parts), end


async def run_generation(
    services: Services,
    request: Request,
    job: GenerateJob,
    stored: StoredModel,
    display_model: str,
    stream: bool,
) -> Response:
    """Admit a generation job (placed by model) and answer with its output."""
    generation = Generation(services, request, job, display_model)
    if _is_unload(job):
        queue = await _unload_replicas(services, job, stored)
    else:
        queue = await services.workers.queue_for(stored)
    await generation.admit(queue)
    return await generation.respond(stream)


def _is_unload(job: GenerateJob) -> bool:
    empty = not job.prompt if job.kind == "generate" else not job.messages
    return empty and job.keep_alive == 0


async def _unload_replicas(services: Services, job: GenerateJob, stored: StoredModel) -> str:
    """The queue of the first worker holding the model; every other holder gets its own unload job.

    A model can be loaded on several workers (replicas, docs/architecture.md): `ollama stop` means all.
    """
    holders = await services.workers.holders(stored.name.display)
    if not holders:
        return await services.workers.queue_for(stored)
    for state in holders[1:]:
        copy = job.model_copy(update={"job_id": new_job_id()})
        try:
            await services.admission.admit(JOB_FUNC_GENERATE, copy, state.queue)
        except ServerBusy:
            log.warning(
                "queue full; %s stays loaded on %s for its keep_alive", stored.name.display, state.worker_id
            )
    return holders[0].queue
