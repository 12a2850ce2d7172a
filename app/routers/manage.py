"""Model management: blobs, create, copy, delete, pull and push.

Blobs, copy and delete are quick store operations answered here; pull, push and create can take
minutes, so they run as jobs on the store worker (app/model_jobs.py) and stream Ollama's progress.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import posixpath
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError

from app.errors import BadRequest, HerdError, ModelNotFoundError, ServerBusy, error_response
from app.model_jobs import run_model_job
from app.openapi_bodies import NDJSON_STREAM, NO_BODY
from app.schemas import CopyRequest, CreateRequest, DeleteRequest, Options, PullRequest
from app.services import Services, get_services, new_job_id, now_ns, request_id
from herd.contracts import (
    JOB_FUNC_CREATE,
    JOB_FUNC_GENERATE,
    JOB_FUNC_PULL,
    JOB_FUNC_PUSH,
    CreateSpec,
    GenerateJob,
    ModelJob,
    manifest_key,
)
from herd.names import InvalidModelName, ModelName
from herd.store import ModelNotFound, StoreError
from herd.store.create import CreateError, normalize_quantize

log = logging.getLogger(__name__)
router = APIRouter(tags=["manage"])

# Bytes per read of a blob download.
BLOB_CHUNK = 1 << 20
# How long a delete waits for the workers holding the model to unload it before deleting anyway.
UNLOAD_WAIT_S = 10.0


def _name(raw: str, what: str = "model") -> ModelName:
    if not raw:
        raise BadRequest(f"{what} is required")
    try:
        return ModelName.parse(raw)
    except InvalidModelName as exc:
        raise BadRequest(f"invalid {what} name {raw!r}") from exc


def _blob_path_or_400(services: Services, digest: str) -> Any:
    try:
        return services.store.blob_path(digest)
    except ValueError as exc:
        raise BadRequest(f"invalid digest format {digest!r}") from exc


# --- blobs ------------------------------------------------------------------------------------------


@router.head("/api/blobs/{digest}")
async def blob_exists(digest: str, services: Services = Depends(get_services)) -> Response:
    """200 when the blob is in the store, 404 when it is not."""
    path = _blob_path_or_400(services, digest)
    return Response(status_code=200 if path.is_file() else 404)


_BLOB_BYTES = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


@router.get(
    "/api/blobs/{digest}",
    response_class=Response,
    responses={
        200: {"description": "The blob's bytes", **_BLOB_BYTES},
        206: {"description": "The bytes a Range header asked for", **_BLOB_BYTES},
    },
)
async def download_blob(digest: str, services: Services = Depends(get_services)) -> Response:
    """Download a blob (Herd only): streamed from the store, resumable with a Range header (206).

    Workers on another host fetch the models they lack with it (HERD_STORE_URL), and check the sha256.
    """
    path = _blob_path_or_400(services, digest)
    if not path.is_file():
        return error_response(404, f"blob {digest} not found")
    # Read in chunks, with Range and If-Range handled, never held in memory whole.
    response = FileResponse(path, media_type="application/octet-stream")
    response.chunk_size = BLOB_CHUNK  # Starlette's 64 KiB costs a model fetch most of its speed
    return response


@router.post("/api/blobs/{digest}")
async def upload_blob(digest: str, request: Request, services: Services = Depends(get_services)) -> Response:
    """Upload a blob: 201 once its sha256 matches the digest, 400 (nothing kept) when it does not."""
    store = services.store
    path = _blob_path_or_400(services, digest)
    if path.is_file():
        return Response(status_code=200)
    # Streamed to a partial file and hashed on the way: a model is gigabytes, never held in memory.
    partial = store.new_blob_partial(digest)
    hasher = hashlib.sha256()
    try:
        with open(partial, "xb") as f:
            async for chunk in request.stream():
                hasher.update(chunk)
                f.write(chunk)
            f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
        got = f"sha256:{hasher.hexdigest()}"
        expected = f"sha256:{path.name.removeprefix('sha256-')}"
        if got != expected:
            raise BadRequest(f'digest mismatch, expected "{digest}", got "{got}"')
        store.publish_blob(partial, digest)
    finally:
        partial.unlink(missing_ok=True)
    return Response(status_code=201)


# --- create, pull, push -----------------------------------------------------------------------------


def _parameters(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """The request's parameters, checked like a request's options (a bad value is a 400 naming it)."""
    if not raw:
        return None
    try:
        Options.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise BadRequest(f"invalid value for parameter {field!r}: {first['msg']}") from exc
    params = dict(raw)
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    return params


def _files(services: Services, files: dict[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    for fname, digest in (files or {}).items():
        # Ollama's fs.ValidPath: a relative, clean path with no "..".
        if (
            not fname
            or fname.startswith("/")
            or posixpath.normpath(fname) != fname
            or ".." in fname.split("/")
        ):
            raise BadRequest(f"invalid file name {fname!r}")
        path = _blob_path_or_400(services, digest)
        if not path.is_file():
            raise BadRequest(
                f"blob {digest} for file {fname!r} not found; upload it with POST /api/blobs/{digest}"
            )
        checked[fname] = f"sha256:{path.name.removeprefix('sha256-')}"
    return checked


@router.post("/api/create", responses=NDJSON_STREAM)
async def create(
    body: CreateRequest, request: Request, services: Services = Depends(get_services)
) -> Response:
    """Create a model from an uploaded GGUF or an existing model, optionally quantized; streams progress."""
    name = _name(body.model)
    try:
        quantize = normalize_quantize(body.quantize or body.quantization)
    except CreateError as exc:
        raise BadRequest(exc.message) from exc
    from_model = _name(body.from_, "from").canonical if body.from_ else None
    files = _files(services, body.files)
    # A projector GGUF may come as an ADAPTER, as with Ollama; the store worker tells it from a LoRA.
    adapters = _files(services, body.adapters)
    if from_model is None and not files:
        raise BadRequest("neither 'from' or 'files' was specified")
    license_ = [body.license] if isinstance(body.license, str) else body.license
    spec = CreateSpec(
        from_model=from_model,
        files=files,
        adapters=adapters,
        template=body.template or None,
        system=body.system or None,
        parameters=_parameters(body.parameters),
        messages=[m.model_dump(exclude_none=True) for m in body.messages] if body.messages else None,
        license=license_,
        quantize=quantize,
    )
    job = ModelJob(
        job_id=new_job_id(), request_id=request_id(request), kind="create", model=name.canonical, create=spec
    )
    return await run_model_job(services, request, JOB_FUNC_CREATE, job, body.stream)


@router.post("/api/pull", responses=NDJSON_STREAM)
async def pull(body: PullRequest, request: Request, services: Services = Depends(get_services)) -> Response:
    """Download a model from its registry (through HTTPS_PROXY when set); streams progress."""
    name = _name(body.model)
    job = ModelJob(
        job_id=new_job_id(),
        request_id=request_id(request),
        kind="pull",
        model=name.canonical,
        insecure=body.insecure,
    )
    return await run_model_job(services, request, JOB_FUNC_PULL, job, body.stream)


@router.post("/api/push", responses=NDJSON_STREAM)
async def push(body: PullRequest, request: Request, services: Services = Depends(get_services)) -> Response:
    """Upload a model to the registry its name points at; streams progress."""
    stored = services.resolve(body.model)
    job = ModelJob(
        job_id=new_job_id(),
        request_id=request_id(request),
        kind="push",
        model=stored.name.canonical,
        insecure=body.insecure,
    )
    return await run_model_job(services, request, JOB_FUNC_PUSH, job, body.stream)


# --- copy, delete -----------------------------------------------------------------------------------


@router.post("/api/copy")
async def copy(body: CopyRequest, services: Services = Depends(get_services)) -> Response:
    """Copy a model under a new name; the two share every blob."""
    # Ollama's wording for these two.
    try:
        source = ModelName.parse(body.source)
    except InvalidModelName as exc:
        raise BadRequest(f'source "{body.source}" is invalid') from exc
    try:
        destination = ModelName.parse(body.destination)
    except InvalidModelName as exc:
        raise BadRequest(f'destination "{body.destination}" is invalid') from exc
    try:
        raw = services.store.manifest_bytes(source)
    except ModelNotFound as exc:
        raise HerdError(f'model "{body.source}" not found', status_code=404) from exc
    await asyncio.to_thread(services.store.write_manifest_bytes, destination, raw)
    return Response(status_code=200)


async def _unload_everywhere(services: Services, request: Request, name: ModelName) -> None:
    """Ask every worker that holds the model to unload it (keep_alive 0) and wait a little for them."""
    holders = await services.workers.holders(name.display)
    waits = []
    for state in holders:
        job = GenerateJob(
            job_id=new_job_id(),
            request_id=request_id(request),
            kind="generate",
            model=name.canonical,
            prompt="",
            keep_alive=0,
            admitted_ns=now_ns(),
        )
        try:
            await services.admission.admit(JOB_FUNC_GENERATE, job, state.queue)
        except ServerBusy:
            log.warning(
                "queue full; %s stays loaded on %s until its keep_alive ends", name.display, state.worker_id
            )
            continue
        waits.append(_until_terminal(services, job.job_id))
    if waits:
        _, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=UNLOAD_WAIT_S)
        for task in pending:
            task.cancel()


async def _until_terminal(services: Services, job_id: str) -> None:
    async for _ in services.relay.events(job_id):
        pass


@router.delete("/api/delete", response_class=Response, responses=NO_BODY)
async def delete(
    body: DeleteRequest, request: Request, services: Services = Depends(get_services)
) -> Response:
    """Delete a model: unloaded from the workers first; blobs no other model uses are removed."""
    name = _name(body.model)
    try:
        name = services.store.get(name, raw=body.model).name
    except ModelNotFound as exc:
        raise ModelNotFoundError(body.model) from exc
    except StoreError:
        log.warning("deleting the broken model %s without unloading it", body.model)
    else:
        await _unload_everywhere(services, request, name)
    try:
        await asyncio.to_thread(services.store.delete, name)
    except ModelNotFound as exc:
        raise ModelNotFoundError(body.model) from exc
    # Workers on other hosts no longer fetch it: a job still queued for it is a plain "not found" there.
    await services.redis.delete(manifest_key(name.display))
    return Response(status_code=200)
