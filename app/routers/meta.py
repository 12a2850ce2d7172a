"""GET|HEAD /, GET|HEAD /api/version, and the liveness and readiness probes."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app import scrape
from app.services import Services, get_services
from herd import __version__

router = APIRouter(tags=["meta"])

# The Ollama release whose API Herd matches; clients gate features on /api/version, so it moves only when
# Herd serves everything that release's API offers (docs/api.md, "The version Herd reports").
OLLAMA_API_VERSION = "0.12.0"


@router.get("/", response_class=PlainTextResponse, operation_id="root_get")
@router.head("/", response_class=PlainTextResponse, operation_id="root_head")
async def root() -> str:
    """Ollama's liveness answer, which clients probe before anything else."""
    return "Ollama is running"


@router.get("/api/version", operation_id="version_get")
@router.head("/api/version", operation_id="version_head")  # health checks probe with HEAD, as Ollama answers
async def version() -> dict[str, str]:
    """The Ollama API version served (and Herd's own)."""
    return {"version": OLLAMA_API_VERSION, "herd_version": __version__}


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The API process is up."""
    return {"status": "ok"}


@router.get("/health/ready", response_model=None)
async def ready(services: Services = Depends(get_services)) -> dict[str, Any] | JSONResponse:
    """Ready when Redis answers and at least one worker heartbeats."""
    try:
        await services.redis.ping()
        workers = await services.workers.states()
    except (aioredis.RedisError, OSError) as exc:
        return JSONResponse({"error": f"redis unreachable: {exc}"}, status_code=503)
    if not workers:
        return JSONResponse({"error": "no worker is running"}, status_code=503)
    return {"status": "ready", "workers": [w.worker_id for w in workers]}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(services: Services = Depends(get_services)) -> Response:
    """Prometheus metrics (nginx serves them on its internal listener only, unless HERD_METRICS_PUBLIC)."""
    return Response(await scrape.render(services), media_type=CONTENT_TYPE_LATEST)
