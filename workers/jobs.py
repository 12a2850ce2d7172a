"""RQ job functions. RQ calls them by dotted path (app.contracts.JOB_FUNC_*) with a JSON payload.

RQ gives a job function no handle on the worker that runs it, so the worker process binds its runtime
here once at start (workers.main); nothing else in the process reads it.
"""

from __future__ import annotations

from typing import Any

from app.contracts import EmbedJob, GenerateJob
from workers.runtime import WorkerRuntime

_runtime: WorkerRuntime | None = None


def bind_runtime(runtime: WorkerRuntime | None) -> None:
    """Called by the worker entry point before it takes jobs, and with None when it stops."""
    global _runtime
    _runtime = runtime


def _require() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("no worker runtime bound: jobs run only inside `herd worker`")
    return _runtime


def run_generate(payload: dict[str, Any]) -> None:
    """/api/generate and /api/chat: prepare the sequence and hand it to the decode loop."""
    _require().generate(GenerateJob.model_validate(payload))


def run_embed(payload: dict[str, Any]) -> None:
    """/api/embed and /api/embeddings."""
    _require().embed(EmbedJob.model_validate(payload))
