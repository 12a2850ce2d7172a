"""The contract between the API and the workers: job payloads, stream events and Redis keys.

Both sides import this module and nothing else of each other, so the API never pulls in llama_cpp
and a worker never pulls in FastAPI. Payloads travel as JSON (RQ's JSONSerializer), events as one
JSON document per Redis Stream entry.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# --- Redis keys -------------------------------------------------------------------------------------

KEY_PREFIX = "herd:"
# The RQ queue that any worker takes jobs from (a job for a model nobody holds).
SHARED_QUEUE = "herd-shared"
# Set of the RQ queue keys whose lengths together are the backlog that OLLAMA_MAX_QUEUE bounds.
QUEUE_KEYS_SET = "herd:queue-keys"
# Set of worker ids; each has a state key below that expires when its heartbeat stops.
WORKERS_SET = "herd:workers"
# Every event stream outlives its job by this much, so a slow reader still gets the end.
EVENT_STREAM_TTL_S = 600
# Job records (RQ hashes) are dropped this long after they finish.
JOB_RESULT_TTL_S = 60

JOB_FUNC_GENERATE = "workers.jobs.run_generate"
JOB_FUNC_EMBED = "workers.jobs.run_embed"


def rq_queue_key(queue_name: str) -> str:
    """The Redis list behind an RQ queue of that name."""
    return f"rq:queue:{queue_name}"


def worker_queue_name(worker_id: str) -> str:
    """The RQ queue that only this worker takes jobs from (jobs for models it holds)."""
    return f"herd-worker-{worker_id}"


def model_queue_name(model_display: str) -> str:
    """The RQ queue of one model's waiting jobs, which every worker holding the model reads (FIFO per model)."""
    return f"herd-model-{model_display}"


MODEL_QUEUE_PREFIX = "herd-model-"


def assigned_key(worker_id: str) -> str:
    """A set of model queues placement asked this worker to read too: it becomes a replica of those models."""
    return f"herd:assigned:{worker_id}"


def worker_last_key(worker_id: str) -> str:
    """The worker's last published state without a TTL: once the state expires, its running jobs are known."""
    return f"herd:worker-last:{worker_id}"


def manifest_key(model_display: str) -> str:
    """The model's manifest as the API's store has it, for a worker on another host to fetch its blobs by."""
    return f"herd:manifest:{model_display}"


def worker_state_key(worker_id: str) -> str:
    """The JSON document a worker advertises (loaded models, slots), kept alive by its heartbeat."""
    return f"herd:worker:{worker_id}"


def events_key(job_id: str) -> str:
    """The Redis Stream a worker writes a job's tokens, stats and errors to."""
    return f"herd:events:{job_id}"


def cancel_key(job_id: str) -> str:
    """Present when the job's client went away: the worker stops at the next decode step."""
    return f"herd:cancel:{job_id}"


def lease_key(job_id: str) -> str:
    """Present while a client waits for the job; a worker drops a job whose lease has lapsed."""
    return f"herd:lease:{job_id}"


# --- Job payloads -----------------------------------------------------------------------------------


def optional_fields_take_null(schema: dict[str, Any]) -> None:
    """Say in the OpenAPI what the API does: an optional field may be JSON null, read as absent.

    A pydantic `json_schema_extra` hook for the bodies whose nulls the API drops before validation, as
    Go's decoder does (app/schemas.py absent_nulls); without it the published schema claims a null is
    refused, and a client generated from it, or a fuzzer, learns the wrong rule.
    """
    required = set(schema.get("required", ()))
    for name, prop in list(schema.get("properties", {}).items()):
        if name in required or _takes_null(prop):
            continue
        kept = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
        schema["properties"][name] = {"anyOf": [prop, {"type": "null"}], **kept}


def _takes_null(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "null" or any(_takes_null(p) for p in prop.get("anyOf", ()))


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(json_schema_extra=optional_fields_take_null)

    index: int = 0  # the call's position among the response's calls, as Ollama numbers them
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(BaseModel):
    model_config = ConfigDict(json_schema_extra=optional_fields_take_null)

    id: str | None = None  # "call_" and 8 random characters on a generated call, as Ollama writes it
    function: ToolCallFunction


class ChatMessage(BaseModel):
    """One chat turn as Ollama's /api/chat takes it."""

    model_config = ConfigDict(json_schema_extra=optional_fields_take_null)

    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    thinking: str | None = None


class GenerateJob(BaseModel):
    """A text-generation job: /api/generate (prompt) or /api/chat (messages)."""

    job_id: str
    request_id: str
    kind: Literal["generate", "chat"]
    model: str  # canonical name, host/namespace/model:tag
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    context: list[int] | None = None
    # /api/generate's images (base64); a chat's images are on its messages.
    images: list[str] | None = None
    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None
    # The request's think (true, false or a level); None when it sets none. Templates see it.
    think: bool | str | None = None
    # False: a prompt over num_ctx is refused rather than losing its oldest messages.
    truncate: bool = True
    # False: a generation that fills num_ctx stops ("length") rather than shifting the context.
    shift: bool = True
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # None: no log probabilities; n >= 0: each token's, with its n likeliest alternatives.
    logprobs: int | None = None
    # Seconds; None keeps the loaded model's current rule, negative keeps it forever, 0 unloads after.
    keep_alive: float | None = None
    # Monotonic-free wall clock (ns) at admission, for total_duration.
    admitted_ns: int
    # Times a worker that could not get the model's files put the job back for another (at most 3).
    requeues: int = 0


class EmbedJob(BaseModel):
    """An embedding job: /api/embed and the legacy /api/embeddings."""

    job_id: str
    request_id: str
    model: str
    inputs: list[str]
    truncate: bool = True
    dimensions: int | None = None
    # /api/embed returns unit vectors; the legacy /api/embeddings returns them as the model gives them.
    normalize: bool = True
    options: dict[str, Any] = Field(default_factory=dict)
    keep_alive: float | None = None
    admitted_ns: int
    requeues: int = 0


# --- Events -----------------------------------------------------------------------------------------

# "started" names the worker that took the job and its incarnation (WorkerState.incarnation), so the API
# can tell when that worker dies, even once a restarted process heartbeats under the same id.
# "progress" carries one Ollama progress object (pull, push, create) under "data".
# "token" carries text (and `logprobs` when asked); "tool_call" one whole call parsed from the output;
# "thinking" carries text the model thought (split off its content by the worker), as "token" does.
EventType = Literal["started", "token", "thinking", "tool_call", "done", "error", "embedding", "progress"]


def encode_event(kind: EventType, **fields: Any) -> dict[str, str]:
    """One Redis Stream entry: the event's JSON under a single field."""
    return {"e": json.dumps({"type": kind, **fields}, separators=(",", ":"))}


def decode_event(entry: dict[bytes, bytes] | dict[str, str]) -> dict[str, Any]:
    """The inverse of encode_event, for entries read with or without decode_responses."""
    raw = entry.get(b"e") if b"e" in entry else entry.get("e")  # type: ignore[call-overload]
    if raw is None:
        raise ValueError("event stream entry without an 'e' field")
    event: dict[str, Any] = json.loads(raw)
    return event


# --- Worker state -----------------------------------------------------------------------------------


class LoadedModelState(BaseModel):
    """What a worker advertises for each model it holds (feeds /api/ps and placement)."""

    name: str
    model: str
    digest: str
    size: int
    size_vram: int = 0
    expires_at: str  # RFC 3339; far future for pinned models
    context_length: int
    details: dict[str, Any] = Field(default_factory=dict)
    busy: int = 0
    num_parallel: int = 1
    keep_alive: float = 300.0  # seconds; negative: pinned
    estimate: int = 0  # bytes this model is counted for in the worker's memory budget
    last_used: float = 0.0  # wall clock


class WorkerState(BaseModel):
    """The document under worker_state_key, refreshed on every heartbeat and model change."""

    worker_id: str
    # Unique to one start of the worker process: a restart under the same worker_id advertises another.
    incarnation: str = ""
    pid: int
    device: str  # "cpu" or "cuda:<index>"
    queue: str
    slots_total: int
    slots_busy: int = 0
    models: list[LoadedModelState] = Field(default_factory=list)
    loads: int = 0  # models loaded since the worker started: consecutive requests must not reload
    # For placement: what this worker can still take without evicting, and its own defaults.
    max_loaded: int = 3
    memory_budget: int = 0
    memory_used: int = 0
    context_length: int = 4096
    num_parallel: int = 0  # 0: chosen per model (4, or 1 when 4 do not fit)
    heartbeat_at: float
    # Job ids this incarnation runs: once its state expires, they are failed and cancelled (app/sweeper.py).
    running: list[str] = Field(default_factory=list)
    # Hex digests of the large blobs (weights, projectors) in this worker's store: placement prefers a
    # worker that has a model's files over one that would fetch them.
    blobs: list[str] = Field(default_factory=list)


# --- Model jobs (pull, push, create) ------------------------------------------------------------------

# The RQ queue of the store worker (`herd store-worker`). Not in QUEUE_KEYS_SET: a long download must
# not count against OLLAMA_MAX_QUEUE, which bounds inference.
MODELS_QUEUE = "herd-models"
JOB_FUNC_PULL = "workers.store.jobs.run_pull"
JOB_FUNC_PUSH = "workers.store.jobs.run_push"
JOB_FUNC_CREATE = "workers.store.jobs.run_create"


class CreateSpec(BaseModel):
    """The parts of an /api/create request the store worker builds the model from."""

    from_model: str | None = None  # canonical name of the base model
    files: dict[str, str] = Field(default_factory=dict)  # file name -> "sha256:<hex>" blob
    # ADAPTER files (name -> blob); a projector GGUF among them becomes the projector layer.
    adapters: dict[str, str] = Field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    license: list[str] | None = None
    quantize: str | None = None  # upper-case llama.cpp type name, e.g. "Q4_K_M"


class ModelJob(BaseModel):
    """A store job run by the store worker: pull or push through a registry, or create."""

    job_id: str
    request_id: str
    kind: Literal["pull", "push", "create"]
    model: str  # canonical name
    insecure: bool = False
    create: CreateSpec | None = None
