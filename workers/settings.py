"""Settings of a worker process, read once at start."""

from __future__ import annotations

import os
import socket

from pydantic import AliasChoices, Field, field_validator

from app.durations import parse_keep_alive
from app.settings import CommonSettings


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    """One worker process: one GPU (or the CPU), its models and its sequence slots."""

    worker_id: str = Field(
        default_factory=_default_worker_id,
        validation_alias=AliasChoices("HERD_WORKER_ID"),
        description="Stable name of this worker; its private queue and state key derive from it.",
    )
    keep_alive_default: str = Field(
        default="5m",
        validation_alias=AliasChoices("OLLAMA_KEEP_ALIVE"),
        description="How long a model stays loaded after its last request when the request names none.",
    )
    num_parallel: int = Field(
        default=1,
        ge=1,
        le=64,
        validation_alias=AliasChoices("OLLAMA_NUM_PARALLEL"),
        description="Sequences decoded together per loaded model.",
    )
    max_loaded_models: int = Field(
        default=3,
        ge=1,
        le=64,
        validation_alias=AliasChoices("OLLAMA_MAX_LOADED_MODELS"),
        description="Most models this worker holds in memory at once.",
    )
    context_length: int = Field(
        default=4096,
        ge=16,
        le=1 << 20,
        validation_alias=AliasChoices("OLLAMA_CONTEXT_LENGTH"),
        description="num_ctx when neither the request nor the model's parameters set one.",
    )
    threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=1024,
        validation_alias=AliasChoices("HERD_THREADS"),
        description="CPU threads llama.cpp uses for decoding.",
    )
    n_gpu_layers: int = Field(
        default=-1,
        validation_alias=AliasChoices("HERD_GPU_LAYERS"),
        description="Layers offloaded to the GPU (-1: all; ignored on a CPU-only build).",
    )
    heartbeat_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        validation_alias=AliasChoices("HERD_HEARTBEAT"),
        description="Seconds between worker state refreshes in Redis; the state expires after three.",
    )

    @field_validator("keep_alive_default")
    @classmethod
    def _keep_alive_parses(cls, value: str) -> str:
        parse_keep_alive(value)
        return value

    @property
    def device(self) -> str:
        """The device this worker is pinned to, as /api/ps reports it."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        if visible and visible not in ("-1", "none"):
            return f"cuda:{visible}"
        return "cpu"
