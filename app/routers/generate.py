"""POST /api/generate and POST /api/chat."""

from __future__ import annotations

import binascii
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.errors import BadRequest
from app.generation import created_at, run_generation
from app.openapi_bodies import NDJSON_STREAM
from app.schemas import ChatRequest, GenerateRequest, options_payload
from app.services import Services, get_services, new_job_id, now_ns, request_id
from app.thinking import resolve_think
from herd.contracts import GenerateJob
from herd.durations import InvalidDuration, parse_keep_alive
from herd.json_schema import SchemaError, check_schema
from herd.store import StoredModel
from herd.templates.capabilities import supports_tools
from herd.templates.gotemplate import GoTemplateError
from herd.templates.ollama_execute import check_template

router = APIRouter(tags=["generate"])


def keep_alive_seconds(value: str | float | None) -> float | None:
    """A request's keep_alive in seconds (negative: for ever), or None to keep the model's current rule."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except InvalidDuration as exc:
        raise BadRequest(str(exc)) from exc


def check_format(fmt: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """Ollama accepts "", "json" or a JSON schema object; a schema the grammar cannot enforce is a 400."""
    if isinstance(fmt, dict):
        try:
            check_schema(fmt)
        except SchemaError as exc:
            raise BadRequest(f"invalid format: {exc}") from exc
        return fmt
    if fmt is None or fmt == "" or fmt == "json":
        return fmt or None
    raise BadRequest(f'invalid format {fmt!r}: format must be an empty string, "json", or a JSON schema')


def check_tools(tools: list[dict[str, Any]]) -> None:
    """Every tool must be a function with a name, as templates and the call parser rely on it."""
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise BadRequest(f'tools[{i}] must be {{"type": "function", "function": {{"name": ...}}}}')
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise BadRequest(f"tools[{i}].function.name must be a non-empty string")


def check_images(images: list[str] | None, field: str) -> None:
    """Every image must be standard base64, as Go's decoder reads Ollama's `[]byte` images."""
    for i, image in enumerate(images or ()):
        try:
            # Go's base64 decoder skips line breaks, and nothing else that is not of its alphabet.
            binascii.a2b_base64(image.replace("\r", "").replace("\n", ""), strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"invalid base64 data in {field}[{i}]: {exc}") from exc


def check_vision(stored: StoredModel, has_images: bool) -> None:
    """Images need a projector: Ollama's capability error, never an image silently dropped."""
    if has_images and not stored.projectors:
        raise BadRequest(f"{stored.name.display} does not support vision")


async def _unload_without_worker(services: Services, display: str) -> bool:
    """True when no worker holds the model, so an unload request has nothing to do."""
    return not await services.workers.holders(display)


def _unloaded(kind: str, model: str) -> JSONResponse:
    body: dict[str, Any] = {"model": model, "created_at": created_at()}
    if kind == "generate":
        body["response"] = ""
    else:
        body["message"] = {"role": "assistant", "content": ""}
    body.update(done=True, done_reason="unload")
    return JSONResponse(body)


@router.post("/api/generate", responses=NDJSON_STREAM)
async def generate(
    body: GenerateRequest, request: Request, services: Services = Depends(get_services)
) -> Response:
    """Generate a completion for a prompt; an empty prompt loads (or, with keep_alive 0, unloads) the model."""
    stored = services.resolve(body.model)
    if body.raw and (body.template or body.system or body.context):
        raise BadRequest("raw mode does not support template, system, or context")
    check_images(body.images, "images")
    check_vision(stored, bool(body.images))
    if body.template:
        try:
            check_template(body.template)
        except GoTemplateError as exc:
            raise BadRequest(f"template error: {exc}") from exc
    keep_alive = keep_alive_seconds(body.keep_alive)
    if not body.prompt and keep_alive == 0 and await _unload_without_worker(services, stored.name.display):
        return _unloaded("generate", body.model)
    job = GenerateJob(
        job_id=new_job_id(),
        request_id=request_id(request),
        kind="generate",
        model=stored.name.canonical,
        prompt=body.prompt,
        suffix=body.suffix or None,
        system=body.system or None,
        template=body.template or None,
        raw=body.raw,
        context=body.context or None,
        images=body.images or None,
        think=resolve_think(body.think, stored, body.model),
        truncate=body.truncate,
        shift=body.shift,
        format=check_format(body.format),
        options=options_payload(body.options),
        logprobs=body.logprobs_top(),
        keep_alive=keep_alive,
        admitted_ns=now_ns(),
    )
    return await run_generation(services, request, job, stored, body.model, body.stream)


@router.post("/api/chat", responses=NDJSON_STREAM)
async def chat(body: ChatRequest, request: Request, services: Services = Depends(get_services)) -> Response:
    """Generate the next message of a chat; empty messages load (or, with keep_alive 0, unload) the model."""
    stored = services.resolve(body.model)
    keep_alive = keep_alive_seconds(body.keep_alive)
    if not body.messages and keep_alive == 0 and await _unload_without_worker(services, stored.name.display):
        return _unloaded("chat", body.model)
    for i, message in enumerate(body.messages):
        if message.role not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"invalid role {message.role!r} in messages[{i}]")
        check_images(message.images, f"messages[{i}].images")
    check_vision(stored, any(message.images for message in body.messages))
    if body.tools:
        check_tools(body.tools)
        if not supports_tools(stored):
            raise BadRequest(f"{stored.name.display} does not support tools")
    job = GenerateJob(
        job_id=new_job_id(),
        request_id=request_id(request),
        kind="chat",
        model=stored.name.canonical,
        messages=body.messages,
        tools=body.tools,
        think=resolve_think(body.think, stored, body.model),
        truncate=body.truncate,
        shift=body.shift,
        format=check_format(body.format),
        options=options_payload(body.options),
        logprobs=body.logprobs_top(),
        keep_alive=keep_alive,
        admitted_ns=now_ns(),
    )
    return await run_generation(services, request, job, stored, body.model, body.stream)
