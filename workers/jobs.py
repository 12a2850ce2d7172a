"""RQ job functions. RQ calls them by dotted path (herd.contracts.JOB_FUNC_*) with a JSON payload.

RQ gives a job function no handle on the worker that runs it, so the worker process binds its runtime
here once at start (workers.main); nothing else in the process reads it.
"""

from __future__ import annotations

import logging
from typing import Any

from herd.contracts import EmbedJob, GenerateJob, lease_key
from workers.publisher import Publisher
from workers.rq_worker import until_redis_answers
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

_runtime: WorkerRuntime | None = None

ABANDONED = (
    "the job waited while the queue (Redis) was unreachable and its client was told to retry; "
    "it was not run, please retry"
)


def bind_runtime(runtime: WorkerRuntime | None) -> None:
    """Called by the worker entry point before it takes jobs, and with None when it stops."""
    global _runtime
    _runtime = runtime


def _require() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("no worker runtime bound: jobs run only inside `herd worker`")
    return _runtime


def _abandoned(runtime: WorkerRuntime, job: GenerateJob | EmbedJob) -> bool:
    """True, after publishing an error, when nobody waits for the job any more: its lease lapsed.

    The API renews the lease while the client waits (app/admission.py). A lease lapses when Redis was
    unreachable for so long that the client was told to retry; running the job then would be work for
    nobody, and done twice when the client retries. The error reaches a client that, by a hair, still
    waits.
    """
    if _lease_held(runtime, job):
        return False
    log.warning(
        "job dropped: its client was told to retry while Redis was unreachable",
        extra={"request_id": job.request_id, "job": job.job_id},
    )
    Publisher(runtime.client).send(job.job_id, "error", status=503, error=ABANDONED)
    return True


def _lease_held(runtime: WorkerRuntime, job: GenerateJob | EmbedJob) -> bool:
    """Whether the job's lease is still there, asked until Redis answers.

    The job was popped already: it is in no queue, so giving up on a Redis that just went away (a
    restart, a Sentinel failover) would lose it. A long outage ends in a lapsed lease, and the drop above.
    """
    held = until_redis_answers(
        lambda: runtime.client.exists(lease_key(job.job_id)), stopping=lambda: runtime.draining
    )
    return bool(held)


def run_generate(payload: dict[str, Any]) -> None:
    """/api/generate and /api/chat: prepare the sequence and hand it to the decode loop."""
    runtime = _require()
    job = GenerateJob.model_validate(payload)
    if not _abandoned(runtime, job):
        runtime.generate(job)


def run_embed(payload: dict[str, Any]) -> None:
    """/api/embed and /api/embeddings."""
    runtime = _require()
    job = EmbedJob.model_validate(payload)
    if not _abandoned(runtime, job):
        runtime.embed(job)
