"""Settings of a worker process, read once at start."""

from __future__ import annotations

import os
import re
import socket

from pydantic import AliasChoices, Field, field_validator

from herd.durations import parse_keep_alive
from herd.memory import gpu_memory
from herd.settings import DEFAULT_DRAIN_S, CommonSettings, is_unset

GIB = 1 << 30
# Ollama's default num_ctx by total GPU memory (server/routes.go, Serve): 47 and 23 GiB rather than 48 and
# 24, for cards that report a little less than their nominal size.
NUM_CTX_TIERS = ((47 * GIB, 262144), (23 * GIB, 32768))
NUM_CTX_FLOOR = 4096

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40})


def parse_size(text: str) -> int | None:
    """ "24GiB", "8000MB", "512" (bytes) → bytes; "" → None (no limit)."""
    if not text.strip():
        return None
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f'invalid memory size {text!r}: use bytes or a unit, e.g. "24GiB" or "8000MB"')
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])
    if size <= 0:
        raise ValueError(f"invalid memory size {text!r}: must be more than 0")
    return size


def _default_worker_id() -> str:
    """The host name and this worker's index on it (its GPU's, else 0): the same across restarts, so a
    restarted worker takes back its own queue."""
    gpu = _visible_gpu()
    return f"{socket.gethostname()}-{gpu if gpu is not None else 0}"


def tiered_num_ctx(total_gpu_memory: int | None) -> int:
    """Ollama's default num_ctx for a device with that much GPU memory (None: CPU only)."""
    for least, n_ctx in NUM_CTX_TIERS:
        if total_gpu_memory is not None and total_gpu_memory >= least:
            return n_ctx
    return NUM_CTX_FLOOR


def _visible_gpu() -> int | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return int(visible) if visible.isdigit() else None


def default_num_ctx() -> int:
    """num_ctx when OLLAMA_CONTEXT_LENGTH is unset: tiered by this worker's GPU, 4096 on the CPU."""
    gpu = _visible_gpu()
    return tiered_num_ctx(gpu_memory(gpu, "total") if gpu is not None else None)


class WorkerSettings(CommonSettings):
    """One worker process: one GPU (or the CPU), its models and its sequence slots."""

    worker_id: str = Field(
        default_factory=_default_worker_id,
        validation_alias=AliasChoices("HERD_WORKER_ID"),
        description="Stable name of this worker; its private queue and state key derive from it.",
    )
    store_url: str = Field(
        default="",
        validation_alias=AliasChoices("HERD_STORE_URL"),
        description="The Herd API this worker fetches model blobs from (GET /api/blobs/<digest>) when its "
        "own OLLAMA_MODELS lacks them, e.g. http://gpu1:11434 for a worker on another host; empty (default): "
        "the store is shared with the API (the same host, or NFS) and is read as it is.",
    )
    store_key: str = Field(
        default="",
        validation_alias=AliasChoices("HERD_STORE_KEY"),
        description="The API key sent with blob fetches when the API requires keys (HERD_API_KEYS_FILE).",
    )
    keep_alive_default: str = Field(
        default="5m",
        validation_alias=AliasChoices("OLLAMA_KEEP_ALIVE"),
        description="How long a model stays loaded after its last request when the request names none.",
    )
    num_parallel: int = Field(
        default=0,
        ge=0,
        le=64,
        validation_alias=AliasChoices("OLLAMA_NUM_PARALLEL"),
        description="Sequences decoded together per loaded model; 0 (default): 4, or 1 when 4 do not fit "
        "in memory, decided per model at load time as Ollama does.",
    )
    batch_invariant: bool = Field(
        default=False,
        validation_alias=AliasChoices("HERD_BATCH_INVARIANT"),
        description="The deterministic mode: a request's output does not depend on what it is batched "
        "with (greedy output identical alone or beside others; prompts prefilled alone, at most 7 "
        "sequences per decode batch, no prompt-prefix reuse). Default false: every generating sequence "
        "in one decode step, prompt chunks mixed in, prefixes reused across requests.",
    )
    memory_limit: int | None = Field(
        default=None,
        validation_alias=AliasChoices("HERD_MEMORY_LIMIT"),
        description='Most memory this worker\'s models may take ("24GiB", "8000MB", bytes); default: '
        "the device's free memory (RAM on CPU, VRAM from NVML on a GPU).",
    )
    max_loaded_models: int = Field(
        default=3,
        ge=1,
        le=64,
        validation_alias=AliasChoices("OLLAMA_MAX_LOADED_MODELS"),
        description="Most models this worker holds in memory at once.",
    )
    context_length: int = Field(
        default_factory=default_num_ctx,
        ge=16,
        le=1 << 20,
        validation_alias=AliasChoices("OLLAMA_CONTEXT_LENGTH"),
        description="num_ctx when neither the request nor the model's parameters set one; unset or empty: "
        "by the GPU's total memory as Ollama sets it (≥ 47 GiB: 262144, ≥ 23 GiB: 32768, else and on "
        "the CPU: 4096), capped at the model's trained context.",
    )
    threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=1024,
        validation_alias=AliasChoices("HERD_THREADS"),
        description="CPU threads llama.cpp uses for decoding.",
    )
    stream_interval_ms: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        validation_alias=AliasChoices("HERD_STREAM_INTERVAL_MS"),
        description="Longest a generated token waits to be sent with the next ones (each still its own "
        "line or chunk); a stream's first output and its end go at once. Unset or empty: 100 where the "
        "decode threads take every core (a CPU worker at its default HERD_THREADS), where each send takes "
        "CPU from decoding; else 0, every decode step's tokens at once, as Ollama sends them "
        "(workers/stream_pacer.py).",
    )
    n_gpu_layers: int = Field(
        default=-1,
        validation_alias=AliasChoices("HERD_GPU_LAYERS"),
        description="Layers offloaded to the GPU (-1: all; ignored on a CPU-only build).",
    )
    heartbeat_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        validation_alias=AliasChoices("HERD_HEARTBEAT"),
        description="Seconds between worker state refreshes in Redis; the state expires after three.",
    )
    drain_s: float = Field(
        default=DEFAULT_DRAIN_S,
        ge=0,
        le=3600,
        validation_alias=AliasChoices("HERD_DRAIN_SECONDS"),
        description="On SIGTERM, seconds running generations get to finish before they are failed with an "
        "error; keep it below the grace period before SIGKILL (compose's stop_grace_period).",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("HERD_WORKER_METRICS_HOST"),
        description="Address this worker serves its Prometheus /metrics on (0.0.0.0 inside a container).",
    )
    metrics_port: int = Field(
        default=9400,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("HERD_WORKER_METRICS_PORT"),
        description="Port of this worker's Prometheus /metrics; 0 serves none.",
    )

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory_size(cls, value: object) -> object:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("context_length", mode="before")
    @classmethod
    def _context_length_unset(cls, value: object) -> object:
        # Unset is Ollama's unset: the tiered default.
        return default_num_ctx() if is_unset(value) else value

    @field_validator("stream_interval_ms", mode="before")
    @classmethod
    def _stream_interval_unset(cls, value: object) -> object:
        # Unset: the default by where the decode runs (workers/stream_pacer.py).
        return None if is_unset(value) else value

    @field_validator("keep_alive_default")
    @classmethod
    def _keep_alive_parses(cls, value: str) -> str:
        parse_keep_alive(value)
        return value

    @property
    def gpu_index(self) -> int | None:
        """The GPU this worker is pinned to (its index as NVML numbers it), or None on the CPU."""
        return _visible_gpu()

    @property
    def device(self) -> str:
        """The device this worker is pinned to, as /api/ps reports it."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        if visible and visible not in ("-1", "none"):
            return f"cuda:{visible}"
        return "cpu"
