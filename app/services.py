"""The runtime resources one API process holds, created in the app's lifespan and handed to routes."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import Request

from app.admission import Admission
from app.errors import BadRequest, ModelNotFoundError
from app.placement import WorkerDirectory
from app.relay import EventRelay
from app.settings import ApiSettings
from herd.names import InvalidModelName, ModelName
from herd.store import ModelNotFound, ModelStore, StoredModel


@dataclass
class Services:
    settings: ApiSettings
    redis: aioredis.Redis
    store: ModelStore
    admission: Admission
    workers: WorkerDirectory
    relay: EventRelay

    def resolve(self, raw: str) -> StoredModel:
        """A model name from a request to the stored model, or Ollama's 400/404."""
        if not raw:
            raise BadRequest("model is required")
        try:
            name = ModelName.parse(raw)
        except InvalidModelName as exc:
            raise BadRequest(str(exc)) from exc
        try:
            return self.store.get(name, raw=raw)
        except ModelNotFound as exc:
            raise ModelNotFoundError(raw) from exc

    async def close(self) -> None:
        await self.relay.close()
        await self.redis.aclose()


def get_services(request: Request) -> Services:
    """FastAPI dependency: the process's services, set up by the lifespan."""
    services: Services = request.app.state.services
    return services


def request_id(request: Request) -> str:
    """The id nginx put on the request (X-Request-ID), or a new one."""
    rid: str | None = getattr(request.state, "request_id", None)
    return rid or uuid.uuid4().hex


def new_job_id() -> str:
    return uuid.uuid4().hex


def now_ns() -> int:
    return time.time_ns()
