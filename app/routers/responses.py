"""OpenAI's Responses API: POST /v1/responses, for the OpenAI SDKs' `client.responses` and its clients.

The request becomes the chat job /api/chat admits (app/openai_responses.py); the answer is a `response`
object or the Responses event stream; errors are OpenAI's shape, as everywhere under /v1.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app import openai_responses as compat
from app.errors import BadRequest
from app.generation import chat_job
from app.openai_errors import OpenAIError
from app.routers.openai import _resolve
from app.services import Services, get_services
from app.shaped_generation import NAMED_SSE_STREAM, run_shaped
from app.thinking import resolve_think
from herd.templates.capabilities import supports_tools

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/responses", responses=NAMED_SSE_STREAM)
async def create_response(
    body: compat.ResponsesRequest, request: Request, services: Services = Depends(get_services)
) -> Response:
    """Create a model response (OpenAI's `response`, or its `response.created` … `response.completed` events)."""
    stored = _resolve(services, body.model)
    compat.refuse_unsupported(body)
    offered = compat.tools(body)
    if offered and not supports_tools(stored):
        raise OpenAIError(
            f"{stored.name.display} does not support tools: its chat template does not render them",
            param="tools",
            code="unsupported_parameter",
        )
    try:
        think = resolve_think(compat.think(body), stored, body.model)
    except BadRequest as exc:
        # Ollama's refusal on this API (only its Anthropic API answers without thinking instead).
        raise OpenAIError(exc.message, param="reasoning.effort", code="unsupported_parameter") from exc
    messages, options = compat.chat_messages(body), compat.options(body)
    job = chat_job(request, stored, messages, offered, think, compat.text_format(body), options)
    shape = compat.ResponsesShape(body)
    return await run_shaped(services, request, job, stored, body.model, shape, body.stream)
