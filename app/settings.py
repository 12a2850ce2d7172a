"""The API process's settings (gunicorn + uvicorn workers), on the common base every process kind reads."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field

from herd.settings import CommonSettings


class ApiSettings(CommonSettings):
    """Settings of the API process (gunicorn + uvicorn workers)."""

    max_queue: int = Field(
        default=512,
        ge=1,
        validation_alias=AliasChoices("OLLAMA_MAX_QUEUE"),
        description="Most jobs admitted but not yet started; the next request gets 503.",
    )
    worker_timeout_s: float = Field(
        default=3.0,
        gt=0,
        validation_alias=AliasChoices("HERD_WORKER_TIMEOUT"),
        description="Seconds without a worker heartbeat before a running job is failed.",
    )
    queue_timeout_s: float = Field(
        default=300.0,
        ge=0,
        validation_alias=AliasChoices("HERD_QUEUE_TIMEOUT"),
        description="Seconds a request may wait for a worker to start it before it fails with 503 (0: no limit).",
    )
    retry_after_s: int = Field(
        default=2,
        ge=1,
        validation_alias=AliasChoices("HERD_RETRY_AFTER"),
        description="The Retry-After value (seconds) sent with a 503: queue full, or Redis unreachable.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("HERD_API_KEYS_FILE"),
        description="A file of API keys, one a line; when set, requests need Authorization: Bearer <key>.",
    )
