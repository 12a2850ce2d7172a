"""RQ job records built by the API, which enqueues with its own async Redis client.

RQ's `Queue.enqueue` is synchronous; the API instead builds the job record here and writes it (and the
queue entry) itself in one pipeline. RQ needs a connection object to build a Job, never to use it here.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis
from pydantic import BaseModel
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from app.errors import BadRequest
from herd.contracts import JOB_RESULT_TTL_S

# Only used to construct Job objects: nothing is ever sent through it.
_UNUSED_CONNECTION = redis.Redis()


def new_job(func: str, payload: BaseModel, job_id: str, queue: str, description: str) -> Job:
    """A queued RQ job calling `func(payload=...)` with a JSON payload and no wall-clock timeout.

    Generation time is bounded by num_predict and the context, a pull by the network: progress, not a
    timer, shows that a job is alive. A payload that cannot be written as JSON is the client's: a 400.
    """
    try:
        kwargs = {"payload": payload.model_dump(mode="json")}
    except (ValueError, RecursionError) as exc:  # pydantic's "Maximum serialization depth exceeded"
        raise BadRequest(f"request cannot be queued: {exc}") from exc
    job = Job.create(
        func,
        kwargs=kwargs,
        connection=_UNUSED_CONNECTION,
        id=job_id,
        origin=queue,
        timeout=-1,
        result_ttl=JOB_RESULT_TTL_S,
        failure_ttl=JOB_RESULT_TTL_S,
        ttl=None,
        serializer=JSONSerializer,
        status=JobStatus.QUEUED,
        description=description,
    )
    job.enqueued_at = datetime.now(UTC).replace(tzinfo=None)
    try:
        job.data  # noqa: B018  (serialized now, while a failure is still the request's 400)
    except (ValueError, TypeError, RecursionError) as exc:
        raise BadRequest(f"request cannot be queued: {exc}") from exc
    return job
