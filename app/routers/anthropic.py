"""Anthropic's Messages API: POST /v1/messages, for the Anthropic SDKs and Claude-Code-style clients.

The request becomes the chat job /api/chat admits (app/anthropic_compat.py); the answer is a `message`
object or Anthropic's event stream, and errors are in Anthropic's shape (app/anthropic_errors.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app import anthropic_compat as compat
from app.anthropic_errors import AnthropicError
from app.errors import BadRequest
from app.generation import chat_job
from app.services import Services, get_services
from app.shaped_generation import NAMED_SSE_STREAM, run_shaped
from app.thinking import resolve_think
from herd.templates.capabilities import supports_tools

router = APIRouter(prefix="/v1", tags=["anthropic"])


@router.post("/messages", responses=NAMED_SSE_STREAM)
async def messages(
    body: compat.MessagesRequest, request: Request, services: Services = Depends(get_services)
) -> Response:
    """Create a message (Anthropic's `message`, or its `message_start` … `message_stop` events)."""
    stored = services.resolve(body.model)
    offered = compat.tools(body)
    if offered and not supports_tools(stored):
        raise AnthropicError(
            f"{stored.name.display} does not support tools: its chat template does not render them"
        )
    # As Ollama does for this API (Claude-Code-style clients ask for thinking whatever the model), a
    # model that cannot think answers without thinking instead of refusing.
    try:
        think = resolve_think(compat.think(body), stored, body.model, relax=True)
    except BadRequest as exc:
        raise AnthropicError(exc.message) from exc
    messages, options = compat.chat_messages(body), compat.options(body)
    job = chat_job(request, stored, messages, offered, think, compat.output_format(body), options)
    shape = compat.MessagesShape(body.model, compat.estimate_input_tokens(body))
    return await run_shaped(services, request, job, stored, body.model, shape, body.stream)
