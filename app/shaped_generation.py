"""A generation answered in another vendor's shape: a whole object, or named server-sent events.

/v1/responses (OpenAI's Responses API) and /v1/messages (Anthropic's Messages API) run the same chat job
as /api/chat; only their answers differ. Each supplies a `Shape` that turns the worker's events (text
tokens, thinking text, whole tool calls, the final `done`) into its own object and event sequence.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.generation import Generation
from app.services import Services
from herd.contracts import GenerateJob
from herd.store import StoredModel

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The successful answer, for the served OpenAPI.
NAMED_SSE_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Named server-sent events (`event:` and `data:` lines); with `stream: false`, one object.",
        "content": {"text/event-stream": {}, "application/json": {}},
    }
}
# The worker's events that carry output, besides the ones every follower knows: thinking text arrives as
# its own event beside the content tokens.
THINKING = "thinking"


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event, as both APIs write them: `event:` then one `data:` line."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {body}\n\n".encode()


@dataclass
class Answer:
    """What a non-streamed answer gathers: the content text, the thinking text and the tool calls."""

    text: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def take(self, event: dict[str, Any]) -> None:
        if event["type"] == "token":
            self.text += event["text"]
        elif event["type"] == THINKING:
            self.thinking += event["text"]
        elif event["type"] == "tool_call":
            self.tool_calls.append(event["call"])


class Shape(Protocol):
    """One request's answer in one vendor's shape."""

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """The error document for an error answered before any output."""

    def complete(self, answer: Answer, done: dict[str, Any]) -> dict[str, Any]:
        """The whole answer of a non-streamed request."""

    def opening(self) -> list[bytes]:
        """The events a stream starts with, before the first output."""

    def render(self, event: dict[str, Any]) -> list[bytes]:
        """The events for one worker event (output, done or a late error)."""


class ShapedGeneration(Generation):
    """A chat generation whose answers a `Shape` writes."""

    def __init__(self, services: Services, request: Request, job: GenerateJob, model: str, shape: Shape):
        super().__init__(services, request, job, model)
        self.shape = shape
        self.answer = Answer()

    def error(self, status: int, message: str) -> Response:
        return JSONResponse(
            self.shape.error_body(status, message), status_code=status, headers=self.error_headers(status)
        )

    def complete(self, text: str, event: dict[str, Any]) -> Response:
        return JSONResponse(self.shape.complete(self.answer, event))

    def stream(self, first: dict[str, Any]) -> Response:
        async def events() -> AsyncIterator[bytes]:
            try:
                for piece in self.shape.opening():
                    yield piece
                async for piece in self.relay(first, self.shape.render):
                    yield piece
            finally:
                # A client that leaves during the opening events never reached the relay's own cleanup.
                self.abandon()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def gather(self, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        end = await self.collect(event, self.answer.take)
        return self.answer.text, end


async def run_shaped(
    services: Services,
    request: Request,
    job: GenerateJob,
    stored: StoredModel,
    model: str,
    shape: Shape,
    stream: bool,
) -> Response:
    """Admit a chat job (placed by model) and answer in `shape`."""
    generation = ShapedGeneration(services, request, job, model, shape)
    await generation.admit(await services.workers.queue_for(stored))
    return await generation.respond(stream)
