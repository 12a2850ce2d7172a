"""The OpenAI-compatible API under /v1: chat completions, completions, embeddings and models.

Requests become the same jobs the native routes admit; only the request and response shapes differ
(`app/openai_compat.py`), and errors are answered in OpenAI's shape (`app/openai_errors.py`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app import metrics
from app.errors import BadRequest, ModelNotFoundError
from app.generation import Generation, chat_job
from app.openai_compat import (
    ChatCompletionRequest,
    ChatShape,
    CompletionRequest,
    CompletionShape,
    EmbeddingRequest,
    chat_messages,
    completion_prompt,
    embedding_inputs,
    embedding_list,
    logprobs_top,
    options,
    refuse_unsupported,
    response_format,
    think_from_reasoning,
    tools,
)
from app.openai_errors import OpenAIError, error_body, openai_error_response
from app.openapi_bodies import SSE_STREAM
from app.services import Services, get_services, new_job_id, now_ns, request_id
from app.thinking import resolve_think
from herd.contracts import JOB_FUNC_EMBED, EmbedJob, GenerateJob
from herd.store import StoredModel
from herd.templates.capabilities import supports_tools

router = APIRouter(prefix="/v1", tags=["openai"])

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _resolve(services: Services, model: str) -> StoredModel:
    """The stored model, or OpenAI's 404 naming it."""
    try:
        return services.resolve(model)
    except BadRequest as exc:  # an empty or invalid name
        raise OpenAIError(exc.message, param="model", code="invalid_value") from exc
    except ModelNotFoundError as exc:
        raise OpenAIError(
            f"The model '{model}' does not exist",
            status_code=404,
            param="model",
            code="model_not_found",
        ) from exc


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class OpenAIGeneration(Generation):
    """A generation relayed as one OpenAI object or as server-sent events of chunks."""

    def __init__(
        self, services: Services, request: Request, job: GenerateJob, shape: ChatShape | CompletionShape
    ):
        super().__init__(services, request, job, shape.model)
        self.shape = shape

    def error(self, status: int, message: str) -> Response:
        """An error before any output, in OpenAI's shape."""
        return openai_error_response(status, message, headers=self.error_headers(status))

    def complete(self, text: str, event: dict[str, Any]) -> Response:
        """One chat.completion or text_completion object."""
        thinking = "".join(self.thinking)
        return JSONResponse(self.shape.complete(text, event, self.tool_calls, self.logprobs, thinking))

    def stream(self, first: dict[str, Any]) -> Response:
        """Server-sent chunk events ending with [DONE]."""
        opening = self.shape.opening()

        async def events() -> AsyncIterator[bytes]:
            try:
                if opening is not None:
                    yield _sse(opening)
                async for piece in self.relay(first, self._sse_events):
                    yield piece
            finally:
                # A client that leaves during the opening chunk never reached the relay's own cleanup.
                self.abandon()

        return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)

    def _sse_events(self, event: dict[str, Any]) -> list[bytes]:
        if event["type"] == "token":
            if event["text"] or event.get("logprobs"):
                return [_sse(self.shape.piece(event["text"], event.get("logprobs")))]
            return []
        if event["type"] == "thinking":
            reasoning = self.shape.reasoning(event["text"])
            return [] if reasoning is None else [_sse(reasoning)]
        if event["type"] == "tool_call":
            call = self.shape.tool_call(event["call"])
            return [] if call is None else [_sse(call)]
        if event["type"] == "done":
            usage = [_sse(self.shape.usage_chunk(event))] if self.shape.include_usage else []
            return [_sse(self.shape.finish(event)), *usage, b"data: [DONE]\n\n"]
        status = int(event.get("status", 500))
        return [_sse(error_body(status, str(event.get("error", "generation failed"))))]


async def _generate(
    services: Services,
    request: Request,
    job: GenerateJob,
    stored: StoredModel,
    shape: ChatShape | CompletionShape,
    stream: bool,
) -> Response:
    generation = OpenAIGeneration(services, request, job, shape)
    await generation.admit(await services.workers.queue_for(stored))
    return await generation.respond(stream)


def _think(body: ChatCompletionRequest, stored: StoredModel) -> bool | str | None:
    """`reasoning_effort` as the job's think, settled as the native routes settle it, in OpenAI's shape."""
    try:
        return resolve_think(think_from_reasoning(body), stored, body.model)
    except BadRequest as exc:
        raise OpenAIError(exc.message, param="reasoning_effort", code="unsupported_parameter") from exc


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream and body.stream_options and body.stream_options.include_usage)


@router.post("/chat/completions", responses=SSE_STREAM)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, services: Services = Depends(get_services)
) -> Response:
    """Create a chat completion (OpenAI's `chat.completion`, or `chat.completion.chunk` events)."""
    stored = _resolve(services, body.model)
    refuse_unsupported(body)
    offered = tools(body)
    if offered and not supports_tools(stored):
        raise OpenAIError(
            f"{stored.name.display} does not support tools: its chat template does not render them",
            param="tools",
            code="unsupported_parameter",
        )
    messages = chat_messages(body)
    if any(m.images for m in messages) and not stored.projectors:
        raise OpenAIError(f"{stored.name.display} does not support vision", param="messages")
    think, fmt = _think(body, stored), response_format(body)
    job = chat_job(request, stored, messages, offered, think, fmt, options(body), logprobs_top(body))
    shape = ChatShape(body.model, _include_usage(body), logprobs=job.logprobs is not None)
    return await _generate(services, request, job, stored, shape, body.stream)


@router.post("/completions", responses=SSE_STREAM)
async def completions(
    body: CompletionRequest, request: Request, services: Services = Depends(get_services)
) -> Response:
    """Create a text completion for one prompt (OpenAI's legacy `text_completion`)."""
    stored = _resolve(services, body.model)
    refuse_unsupported(body)
    job = GenerateJob(
        job_id=new_job_id(),
        request_id=request_id(request),
        kind="generate",
        model=stored.name.canonical,
        prompt=completion_prompt(body),
        suffix=body.suffix or None,
        # A thinking model thinks here too (Ollama's default), and its thinking stays out of the text.
        think=resolve_think(None, stored, body.model),
        options=options(body),
        logprobs=logprobs_top(body),
        admitted_ns=now_ns(),
    )
    shape = CompletionShape(body.model, _include_usage(body), logprobs=job.logprobs is not None)
    return await _generate(services, request, job, stored, shape, body.stream)


async def _embed(services: Services, request: Request, job: EmbedJob, stored: StoredModel) -> dict[str, Any]:
    metrics.note_model(request, job.model)
    await services.admission.admit(JOB_FUNC_EMBED, job, await services.workers.queue_for(stored))

    async def gone() -> bool:
        return await request.is_disconnected()

    async for event in services.relay.events(job.job_id, gone):
        if event["type"] in ("embedding", "error"):
            metrics.observe_end(request.url.path, metrics.model_label(job.model), job.admitted_ns, event)
        if event["type"] == "embedding":
            return event
        if event["type"] == "error":
            raise OpenAIError(str(event.get("error")), status_code=int(event.get("status", 500)))
        if event["type"] == "gone":
            if not await services.admission.withdraw(job.job_id):
                await services.relay.cancel(job.job_id)
            raise OpenAIError("client closed the request", status_code=499)
    raise OpenAIError("the event stream ended early", status_code=500)


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest, request: Request, services: Services = Depends(get_services)
) -> JSONResponse:
    """Embed a string or a list of strings as unit vectors (floats, or base64 little-endian float32)."""
    stored = _resolve(services, body.model)
    job = EmbedJob(
        job_id=new_job_id(),
        request_id=request_id(request),
        model=stored.name.canonical,
        inputs=embedding_inputs(body),
        dimensions=body.dimensions,
        admitted_ns=now_ns(),
    )
    event = await _embed(services, request, job, stored)
    return JSONResponse(
        embedding_list(
            body.model, event["embeddings"], int(event.get("prompt_eval_count") or 0), body.encoding_format
        )
    )


def _model_object(model: StoredModel) -> dict[str, Any]:
    return {
        "id": model.name.display,
        "object": "model",
        "created": int(model.modified_at.timestamp()),
        "owned_by": model.name.namespace,
    }


@router.get("/models")
async def list_models(services: Services = Depends(get_services)) -> dict[str, Any]:
    """The models in the store, newest first."""
    return {"object": "list", "data": [_model_object(m) for m in services.store.list()]}


@router.get("/models/{model:path}")
async def retrieve_model(model: str, services: Services = Depends(get_services)) -> dict[str, Any]:
    """One model; names with a namespace (`someone/handmade:v1`) work as they are."""
    return _model_object(_resolve(services, model))
