"""``pull_model``: fetch a model's manifest and blobs from a registry into the store, as Ollama does.

Order of events (Ollama's own statuses): ``pulling manifest``; per layer (config last, as Ollama lists
it) ``pulling <12 hex>`` with digest/total/completed; ``verifying sha256 digest`` while each downloaded
blob is checked and then published; ``writing manifest`` (the registry's bytes, atomically, last);
``success``. A failure raises RegistryError and leaves no manifest and no unverified blob visible.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from herd.names import ModelName
from herd.store import MANIFEST_MEDIA_TYPE, MissingBlob, ModelStore, StoreError
from workers.store.registry.client import RegistryClient, response_error
from workers.store.registry.errors import RegistryCancelled, RegistryError
from workers.store.registry.reference import Reference, normalise_digest
from workers.store.registry.settings import RegistrySettings
from workers.store.registry.transfer import download_blob, publish, verify_partial

logger = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]

MANIFEST_ACCEPT = ", ".join(
    (MANIFEST_MEDIA_TYPE, "application/vnd.oci.image.manifest.v1+json", "application/json;q=0.5")
)
# Progress events are throttled so a fast download does not flood the job's event stream.
_MIN_BYTES = 256 * 1024
_MIN_INTERVAL_S = 0.1
_MAX_MANIFEST = 4 * 1024 * 1024


def _layers(raw: bytes, ref: Reference) -> list[tuple[str, int]]:
    """(digest, size) of every layer, then the config, as Ollama pulls them; validates each."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{ref.host}: the manifest of {ref.name.display} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise RegistryError(f"{ref.host}: the manifest of {ref.name.display} has no layers")
    items = [*doc["layers"], doc.get("config")]
    out: list[tuple[str, int]] = []
    for item in items:
        if not isinstance(item, dict):
            raise RegistryError(f"{ref.host}: the manifest of {ref.name.display} has a malformed layer")
        digest, size = item.get("digest"), item.get("size")
        norm = normalise_digest(digest)
        if norm is None:
            raise RegistryError(
                f"{ref.host}: the manifest of {ref.name.display} names an invalid digest {digest!r}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RegistryError(f"{ref.host}: layer {digest} has an invalid size {size!r}")
        if (norm, size) not in out:
            out.append((norm, size))
    return out


class _Throttle:
    """Sends one layer's progress at most every 100 ms or 256 KiB, and always the final count."""

    def __init__(self, progress: Progress, digest: str, total: int) -> None:
        self.progress, self.digest, self.total = progress, digest, total
        self.sent: int | None = None
        self.at = 0.0

    def __call__(self, completed: int) -> None:
        now = time.monotonic()
        if completed == self.sent:
            return
        if (
            self.sent is not None
            and completed != self.total
            and completed - self.sent < _MIN_BYTES
            and now - self.at < _MIN_INTERVAL_S
        ):
            return
        self.sent, self.at = completed, now
        self.progress(
            {
                "status": f"pulling {self.digest[7:19]}",
                "digest": self.digest,
                "total": self.total,
                "completed": completed,
            }
        )


def fetch_manifest(client: RegistryClient, ref: Reference) -> bytes:
    """The manifest bytes for ``ref``'s tag; RegistryError 404 naming the model and host if absent."""
    scope = f"repository:{ref.repository}:pull"
    with client.open("GET", ref.manifest_url(), scope=scope, headers={"Accept": MANIFEST_ACCEPT}) as r:
        if r.status_code != 200:
            raise response_error(r, f"manifest for {ref.name.display}")
        raw = bytearray()
        for chunk in r.iter_bytes():
            raw += chunk
            if len(raw) > _MAX_MANIFEST:
                raise RegistryError(f"{ref.host}: the manifest of {ref.name.display} is over 4 MiB")
        return bytes(raw)


def pull_model(
    store: ModelStore,
    name: ModelName,
    *,
    insecure: bool,
    settings: RegistrySettings,
    progress: Progress,
    cancelled: Callable[[], bool] = lambda: False,
) -> None:
    """Pull ``name`` from its registry into ``store``, reporting progress as Ollama streams it."""
    ref = Reference.for_name(name)
    with RegistryClient(settings, insecure=insecure) as client:
        progress({"status": "pulling manifest"})
        raw = fetch_manifest(client, ref)
        layers = _layers(raw, ref)
        for digest, size in layers:
            if cancelled():
                raise RegistryCancelled("pull")
            download_blob(
                client,
                store,
                ref,
                digest,
                size,
                settings=settings,
                report=_Throttle(progress, digest, size),
                cancelled=cancelled,
            )
    progress({"status": "verifying sha256 digest"})
    # Every blob is checked before any is published: a bad one leaves no new blob in the store, while
    # the good downloads stay as (invisible) partial files that the next pull reuses.
    for digest, size in layers:
        verify_partial(store, ref, digest, size)
    for digest, size in layers:
        publish(store, digest, size)
    progress({"status": "writing manifest"})
    try:
        store.write_manifest_bytes(name, raw)
    except MissingBlob as exc:
        # A concurrent delete removed a blob we had just published; a new pull fetches it again.
        raise RegistryError(f"{ref.host}: {exc} (removed while pulling); pull again", status=409) from exc
    except StoreError as exc:
        raise RegistryError(f"{ref.host}: cannot write the manifest of {name.display}: {exc}", 500) from exc
    logger.info("pulled %s (%d blobs)", name.display, len(layers))
    progress({"status": "success"})
