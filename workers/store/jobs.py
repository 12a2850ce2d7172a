"""RQ job functions of the store worker: pull, push and create (herd.contracts.JOB_FUNC_PULL/PUSH/CREATE).

Each job publishes Ollama's progress objects as "progress" events on the job's stream, then "done", or
an "error" with the HTTP status the API answers with. A client that goes away sets the job's cancel
flag: a pull stops (its partial blob stays, so the next pull resumes), a create stops before it
publishes a manifest. The registry client (workers.store.registry) is imported inside the jobs, so this module
loads whether or not that package is present.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from herd.contracts import ModelJob, cancel_key
from herd.names import ModelName
from herd.store import ModelNotFound, ModelStore, StoreError
from herd.store.create import CreateCancelled, CreateError, ModelBuilder
from workers.publisher import Publisher
from workers.store.registry import RegistryError, RegistrySettings, pull_model, push_model

log = logging.getLogger(__name__)

# Progress objects for the same status (a download's byte counts) are sent at most this often.
PROGRESS_INTERVAL_S = 0.1
# How often the cancel flag is read while a job runs.
CANCEL_POLL_S = 0.2


@dataclass
class StoreContext:
    """What the store worker process hands its jobs (RQ gives a job no handle on its worker)."""

    store: ModelStore
    client: redis.Redis
    worker_id: str
    incarnation: str = ""  # this start of the store worker process, sent with each job's "started"
    threads: int = 0
    # Read once when the store worker starts, so a bad HERD_CA_BUNDLE stops it there, naming the variable.
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    publisher: Publisher = field(init=False)

    def __post_init__(self) -> None:
        self.publisher = Publisher(self.client)


_context: StoreContext | None = None


def bind_context(context: StoreContext | None) -> None:
    """Called by the store worker before it takes jobs, and with None when it stops."""
    global _context
    _context = context


def _require() -> StoreContext:
    if _context is None:
        raise RuntimeError("no store context bound: model jobs run only inside `herd store-worker`")
    return _context


class JobFailed(Exception):
    """A job that ends with an error the client should see, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class JobCancelled(Exception):
    """The client went away and the job stopped."""


class Progress:
    """Relays one job's progress objects, throttled, and reads its cancel flag."""

    def __init__(self, context: StoreContext, job_id: str):
        self._context = context
        self._job_id = job_id
        self._last_key: tuple[Any, Any] | None = None
        self._last_sent = 0.0
        self._held: dict[str, Any] | None = None
        self._cancel_checked = 0.0
        self._cancelled = False

    def __call__(self, obj: dict[str, Any]) -> None:
        """Send ``obj`` unless it only updates the byte count of the object sent a moment ago."""
        key = (obj.get("status"), obj.get("digest"))
        now = time.monotonic()
        finished = obj.get("total") is not None and obj.get("completed") == obj.get("total")
        if key == self._last_key and not finished and now - self._last_sent < PROGRESS_INTERVAL_S:
            self._held = obj  # sent with the next object, so the last count is never lost
            return
        if self._held is not None and self._last_key != key:
            self._send(self._held)
        self._send(obj)
        self._last_key = key
        self._last_sent = now

    def _send(self, obj: dict[str, Any]) -> None:
        self._held = None
        self._context.publisher.send(self._job_id, "progress", data=obj)

    def flush(self) -> None:
        """Send a held-back object, if any."""
        if self._held is not None:
            self._send(self._held)

    def cancelled(self) -> bool:
        """Whether the client went away (read from Redis at most every CANCEL_POLL_S)."""
        now = time.monotonic()
        if not self._cancelled and now - self._cancel_checked >= CANCEL_POLL_S:
            self._cancel_checked = now
            self._cancelled = bool(self._context.client.exists(cancel_key(self._job_id)))
        return self._cancelled


def _through_registry(action: str, context: StoreContext, job: ModelJob, progress: Progress) -> None:
    func: Callable[..., None] = pull_model if action == "pull" else push_model
    try:
        func(
            context.store,
            ModelName.parse(job.model),
            insecure=job.insecure,
            settings=context.registry,
            progress=progress,
            cancelled=progress.cancelled,
        )
    except RegistryError as exc:
        if progress.cancelled():
            raise JobCancelled(str(exc)) from exc
        raise JobFailed(int(getattr(exc, "status", 500) or 500), str(exc)) from exc
    if progress.cancelled():
        raise JobCancelled(f"{action} of {job.model} stopped: the client went away")


def _quantizer(threads: int) -> Callable[[Path, Path, str], None]:
    def quantize(source: Path, destination: Path, type_name: str) -> None:
        # Imported here: only a quantizing create needs llama.cpp in the store worker.
        from workers.store.quantize import QuantizeError, quantize_gguf

        try:
            quantize_gguf(source, destination, type_name, threads)
        except QuantizeError as exc:
            raise CreateError(str(exc), status=500) from exc

    return quantize


def check_go_template(text: str) -> None:
    from herd.templates.gotemplate import GoTemplateError, parse

    try:
        parse(text)
    except GoTemplateError as exc:
        raise CreateError(f"template error: {exc}") from exc


def _create(context: StoreContext, job: ModelJob, progress: Progress) -> None:
    spec = job.create
    if spec is None:
        raise JobFailed(400, "create job without a create spec")
    if spec.from_model:
        try:
            context.store.get(ModelName.parse(spec.from_model))
        except ModelNotFound:
            # Like Ollama: a base that is not here yet is pulled first.
            _through_registry("pull", context, job.model_copy(update={"model": spec.from_model}), progress)
    builder = ModelBuilder(
        context.store,
        progress=progress,
        quantizer=_quantizer(context.threads),
        check_template=check_go_template,
        cancelled=progress.cancelled,
    )
    try:
        builder.build(ModelName.parse(job.model), spec)
    except CreateCancelled as exc:
        raise JobCancelled(str(exc)) from exc
    except CreateError as exc:
        raise JobFailed(exc.status, exc.message) from exc


def _run(payload: dict[str, Any], body: Callable[[StoreContext, ModelJob, Progress], None]) -> None:
    context = _require()
    job = ModelJob.model_validate(payload)
    extra = {"request_id": job.request_id, "job": job.job_id, "kind": job.kind, "model": job.model}
    progress = Progress(context, job.job_id)
    if progress.cancelled():
        log.info("client left before the model job started", extra=extra)
        return
    publisher = context.publisher
    publisher.send(job.job_id, "started", worker=context.worker_id, incarnation=context.incarnation)
    log.info("model job started", extra=extra)
    try:
        body(context, job, progress)
    except JobCancelled as exc:
        log.info("model job cancelled: %s", exc, extra=extra)
        publisher.send(job.job_id, "error", status=499, error="cancelled: the client went away")
        return
    except JobFailed as exc:
        log.warning("model job failed: %s", exc.message, extra=extra)
        publisher.send(job.job_id, "error", status=exc.status, error=exc.message)
        return
    except (StoreError, OSError) as exc:
        log.error("model job failed: %s", exc, extra=extra)
        publisher.send(job.job_id, "error", status=500, error=str(exc))
        return
    except Exception as exc:
        if progress.cancelled():
            # However the registry client chose to stop, the client asked for it.
            log.info("model job cancelled: %s", exc, extra=extra)
            publisher.send(job.job_id, "error", status=499, error="cancelled: the client went away")
            return
        log.exception("model job failed", extra=extra)
        publisher.send(job.job_id, "error", status=500, error=f"internal error: {exc}")
        raise
    progress.flush()
    publisher.send(job.job_id, "done")
    log.info("model job finished", extra=extra)


def run_pull(payload: dict[str, Any]) -> None:
    """POST /api/pull: download a model through the registry client."""
    _run(payload, lambda c, j, p: _through_registry("pull", c, j, p))


def run_push(payload: dict[str, Any]) -> None:
    """POST /api/push: upload a model through the registry client."""
    _run(payload, lambda c, j, p: _through_registry("push", c, j, p))


def run_create(payload: dict[str, Any]) -> None:
    """POST /api/create: build a model from uploaded files or an existing model."""
    _run(payload, _create)
