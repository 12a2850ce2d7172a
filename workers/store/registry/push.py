"""``push_model``: upload a stored model's blobs and manifest to a registry, as Ollama does.

Statuses: ``retrieving manifest``; per blob ``pushing <12 hex>`` with digest/total/completed (a blob
the registry already has is reported complete without uploading); ``pushing manifest``; ``success``.
Blobs go up with the OCI chunked upload (POST uploads/ → PATCH chunks → PUT ?digest=), so a large
model is never held in memory; the manifest goes up last, byte for byte as stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from herd.names import ModelName
from herd.store import MANIFEST_MEDIA_TYPE, ModelNotFound, ModelStore, StoreError
from workers.store.registry.client import RegistryClient, response_error
from workers.store.registry.errors import RegistryCancelled, RegistryError
from workers.store.registry.reference import Reference, normalise_digest
from workers.store.registry.settings import RegistrySettings

logger = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
_UPLOAD_CHUNK = 16 * 1024 * 1024


def _blobs(raw: bytes, name: ModelName) -> list[tuple[str, int]]:
    """(digest, size) of the layers and then the config of a stored manifest."""
    doc = json.loads(raw)
    out: list[tuple[str, int]] = []
    for item in [*(doc.get("layers") or []), doc.get("config")]:
        digest = normalise_digest(item.get("digest") if isinstance(item, dict) else None)
        size = item.get("size") if isinstance(item, dict) else None
        if digest is None or not isinstance(size, int):
            raise RegistryError(f"the stored manifest of {name.display} has a malformed layer", 500)
        if (digest, size) not in out:
            out.append((digest, size))
    return out


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def _upload(
    client: RegistryClient,
    store: ModelStore,
    ref: Reference,
    digest: str,
    size: int,
    progress: Progress,
    cancelled: Callable[[], bool],
) -> None:
    scope = f"repository:{ref.repository}:push,pull"
    status = {"status": f"pushing {digest[7:19]}", "digest": digest, "total": size}
    with client.open("HEAD", ref.blob_url(digest), scope=scope) as r:
        if r.status_code == 200:
            progress({**status, "completed": size})
            return
    with client.open("POST", ref.uploads_url(), scope=scope, content=b"") as r:
        if r.status_code not in (201, 202):
            raise response_error(r, f"upload of {digest}")
        location = urljoin(str(r.url), r.headers.get("location", ""))
    if not location:
        raise RegistryError(f"{ref.host}: no upload location for {digest}")
    progress({**status, "completed": 0})
    sent = 0
    with open(store.blob_path(digest), "rb") as f:
        while chunk := f.read(_UPLOAD_CHUNK):
            if cancelled():
                raise RegistryCancelled("push")
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
            }
            with client.open("PATCH", location, scope=scope, headers=headers, content=chunk) as r:
                if r.status_code not in (202, 204):
                    raise response_error(r, f"upload of {digest}")
                location = urljoin(str(r.url), r.headers.get("location", location))
            sent += len(chunk)
            progress({**status, "completed": sent})
    with client.open("PUT", _with_digest(location, digest), scope=scope, content=b"") as r:
        if r.status_code not in (201, 204):
            raise response_error(r, f"upload of {digest}")


def push_model(
    store: ModelStore,
    name: ModelName,
    *,
    insecure: bool,
    settings: RegistrySettings,
    progress: Progress,
    cancelled: Callable[[], bool] = lambda: False,
) -> None:
    """Push ``name`` from ``store`` to the registry its name points at."""
    ref = Reference.for_name(name)
    progress({"status": "retrieving manifest"})
    try:
        model = store.get(name)
        assert model.manifest_path is not None
        raw = model.manifest_path.read_bytes()
        blobs = _blobs(raw, name)
    except ModelNotFound as exc:
        raise RegistryError(str(exc), status=404) from exc
    except (OSError, ValueError, StoreError) as exc:
        raise RegistryError(f"cannot read the manifest of {name.display}: {exc}", status=500) from exc
    with RegistryClient(settings, insecure=insecure) as client:
        for digest, size in blobs:
            if cancelled():
                raise RegistryCancelled("push")
            _upload(client, store, ref, digest, size, progress, cancelled)
        progress({"status": "pushing manifest"})
        scope = f"repository:{ref.repository}:push,pull"
        headers = {"Content-Type": MANIFEST_MEDIA_TYPE}
        with client.open("PUT", ref.manifest_url(), scope=scope, headers=headers, content=raw) as r:
            if r.status_code not in (200, 201, 202):
                raise response_error(r, f"manifest for {name.display}")
    logger.info("pushed %s (%d blobs)", name.display, len(blobs))
    progress({"status": "success"})
