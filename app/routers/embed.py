"""POST /api/embed and the legacy POST /api/embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app import metrics
from app.errors import HerdError
from app.routers.generate import keep_alive_seconds
from app.schemas import EmbeddingsRequest, EmbedRequest, options_payload
from app.services import Services, get_services, new_job_id, now_ns, request_id
from herd.contracts import JOB_FUNC_EMBED, EmbedJob
from herd.store import StoredModel

router = APIRouter(tags=["embed"])


async def _run(services: Services, request: Request, job: EmbedJob, stored: StoredModel) -> dict[str, Any]:
    metrics.note_model(request, job.model)
    queue = await services.workers.queue_for(stored)
    await services.admission.admit(JOB_FUNC_EMBED, job, queue)

    async def gone() -> bool:
        return await request.is_disconnected()

    async for event in services.relay.events(job.job_id, gone):
        if event["type"] in ("embedding", "error"):
            metrics.observe_end(request.url.path, metrics.model_label(job.model), job.admitted_ns, event)
        if event["type"] == "embedding":
            event["total_duration"] = max(now_ns() - job.admitted_ns, 0)
            return event
        if event["type"] == "error":
            raise HerdError(str(event.get("error")), status_code=int(event.get("status", 500)))
        if event["type"] == "gone":
            if not await services.admission.withdraw(job.job_id):
                await services.relay.cancel(job.job_id)
            raise HerdError("client closed the request", status_code=499)
    raise HerdError("the event stream ended early")


@router.post("/api/embed")
async def embed(
    body: EmbedRequest, request: Request, services: Services = Depends(get_services)
) -> JSONResponse:
    """Embed a string or a list of strings as L2-normalised vectors."""
    stored = services.resolve(body.model)
    # Ollama treats an empty string as "no input": the model loads and the answer has no vectors.
    inputs = ([body.input] if body.input else []) if isinstance(body.input, str) else list(body.input)
    job = EmbedJob(
        job_id=new_job_id(),
        request_id=request_id(request),
        model=stored.name.canonical,
        inputs=inputs,
        truncate=body.truncate,
        dimensions=body.dimensions,
        options=options_payload(body.options),
        keep_alive=keep_alive_seconds(body.keep_alive),
        admitted_ns=now_ns(),
    )
    event = await _run(services, request, job, stored)
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": event["embeddings"],
            "total_duration": event["total_duration"],
            "load_duration": event.get("load_duration", 0),
            "prompt_eval_count": event.get("prompt_eval_count", 0),
        }
    )


@router.post("/api/embeddings")
async def embeddings(
    body: EmbeddingsRequest, request: Request, services: Services = Depends(get_services)
) -> JSONResponse:
    """Legacy: embed one prompt, returned as the model gives it (not normalised)."""
    stored = services.resolve(body.model)
    job = EmbedJob(
        job_id=new_job_id(),
        request_id=request_id(request),
        model=stored.name.canonical,
        inputs=[body.prompt] if body.prompt else [],
        normalize=False,
        options=options_payload(body.options),
        keep_alive=keep_alive_seconds(body.keep_alive),
        admitted_ns=now_ns(),
    )
    event = await _run(services, request, job, stored)
    vectors = event["embeddings"]
    return JSONResponse({"embedding": vectors[0] if vectors else []})
