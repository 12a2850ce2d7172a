"""A worker's copy of a model from the API's store, fetched blob by blob over HTTP before it loads.

A worker on another host has its own OLLAMA_MODELS. Placement publishes each model's manifest in Redis
(`herd:manifest:<name>`) when it places a job; a worker with HERD_STORE_URL set compares it with its own
and fetches each blob it lacks with `GET /api/blobs/<digest>` from the API: streamed into the same stable
partial file a pull uses (`blobs/sha256-<hex>-partial`, flocked, so one fetch per digest), resumed with a
Range request after a broken connection, verified by sha256 and only then renamed into place. The
manifest is written last, so the model appears whole or not at all. A worker without HERD_STORE_URL
reads its store as it is: the host's own, or a shared (NFS, even read-only) copy of the API's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis

from herd.contracts import manifest_key
from herd.names import InvalidModelName, ModelName
from herd.store import ModelNotFound, ModelStore, StoreError

log = logging.getLogger(__name__)

# Broken connections one blob's fetch resumes after before it gives up.
RETRIES = 5
# Only blobs at least this large are advertised (weights, projectors): the rest are small layers.
ADVERTISED_MIN_BYTES = 128 << 10
_CHUNK = 1 << 20
_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class FetchError(Exception):
    """The model's blobs could not be had from the API's store; `status` is the job's error status."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


def store_blobs(store: ModelStore) -> list[str]:
    """Hex digests of the large blobs in the store, as a worker advertises them."""
    found = []
    try:
        entries = list(os.scandir(store.blobs_dir))
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if len(name) != 71 or not name.startswith("sha256-"):
            continue  # partials and temp files
        with contextlib.suppress(OSError):
            if entry.stat().st_size >= ADVERTISED_MIN_BYTES:
                found.append(name.removeprefix("sha256-"))
    return sorted(found)


@contextlib.contextmanager
def _locked(partial: Path) -> Iterator[int]:
    """The partial file, opened and flocked (the lock a pull of the same digest takes too)."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(partial).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False  # the holder before us published or discarded it: open the new one
            if same:
                yield fd
                return
        finally:
            os.close(fd)


class BlobFetcher:
    """Brings a model's blobs and manifest into this worker's store from the API's (HERD_STORE_URL)."""

    def __init__(self, store: ModelStore, client: redis.Redis, url: str, key: str):
        self._store = store
        self._client = client
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def enabled(self) -> bool:
        return bool(self._url)

    def ensure(self, raw_name: str) -> bool:
        """Make the store hold the model as the API's does; True when something was fetched or written."""
        if not self._url:
            return False
        try:
            name = ModelName.parse(raw_name)
        except InvalidModelName:
            return False  # the resolve that follows says why
        published = self._client.get(manifest_key(name.display))
        if published is None:
            return False  # not placed through the API (or long ago): the store is taken as it is
        raw = published if isinstance(published, bytes) else str(published).encode()
        try:
            if self._store.manifest_bytes(name) == raw:
                return False
        except ModelNotFound:
            pass
        try:
            doc = json.loads(raw)
            items = [doc["config"], *doc["layers"]]
            wanted = [(str(i["digest"]), int(i["size"])) for i in items]
        except (ValueError, KeyError, TypeError) as exc:
            raise FetchError(f"the published manifest of {name.display} is unreadable: {exc}") from exc
        started = time.monotonic()
        fetched = 0
        for digest, size in wanted:
            if not self._store.blob_is_complete(digest, size):
                self._fetch(digest, size)
                fetched += size
        try:
            self._store.write_manifest_bytes(name, raw)
        except (OSError, StoreError) as exc:
            raise FetchError(
                f"could not write the manifest of {name.display} to {self._store.root}: {exc}"
            ) from exc
        log.info(
            "model fetched from the store",
            extra={"model": name.display, "bytes": fetched, "seconds": round(time.monotonic() - started, 3)},
        )
        return True

    def _fetch(self, digest: str, size: int) -> None:
        """One blob, into the stable partial file, verified and renamed into place."""
        try:
            partial = self._store.resumable_partial_path(digest)
        except ValueError as exc:
            raise FetchError(f"invalid blob digest {digest!r} in a published manifest") from exc
        try:
            with _locked(partial) as fd:
                if self._store.blob_is_complete(digest, size):
                    partial.unlink(missing_ok=True)  # another fetch or pull published it meanwhile
                    return
                parts = partial.with_name(partial.name + ".parts")
                if parts.exists() or os.fstat(fd).st_size > size:
                    # A pull's preallocated, ranged download: its length is not its progress.
                    os.ftruncate(fd, 0)
                    parts.unlink(missing_ok=True)
                self._download(fd, digest, size)
                self._store.publish_verified(partial, digest)
        except OSError as exc:
            raise FetchError(f"could not write blob {digest} to {self._store.blobs_dir}: {exc}") from exc

    def _download(self, fd: int, digest: str, size: int) -> None:
        """Fetch what the partial file lacks, resuming after a break; verify the whole by sha256."""
        url = f"{self._url}/api/blobs/{digest}"
        # Hashed as it is written (one read of the bytes): a resumed file's kept prefix first.
        h = _hash_prefix(fd)
        failures = 0
        with httpx.Client(timeout=_TIMEOUT, headers=self._headers) as http:
            while (have := os.fstat(fd).st_size) < size:
                headers = {"Range": f"bytes={have}-"} if have else {}
                before = have
                try:
                    with http.stream("GET", url, headers=headers) as r:
                        if r.status_code == 200 and have:
                            os.ftruncate(fd, 0)  # the server ignored the Range: start over
                            have, h = 0, hashlib.sha256()
                        elif r.status_code not in (200, 206):
                            r.read()
                            raise FetchError(
                                f"GET {url} answered {r.status_code}: {r.text[:200]}",
                                status=404 if r.status_code == 404 else 502,
                            )
                        for chunk in r.iter_bytes(_CHUNK):
                            piece = chunk[: size - have]  # never past the blob's size
                            os.pwrite(fd, piece, have)
                            h.update(piece)
                            have += len(piece)
                except httpx.TransportError as exc:
                    failures = 1 if os.fstat(fd).st_size > before else failures + 1
                    if failures > RETRIES:
                        raise FetchError(f"fetching {url} failed: {exc}", status=502) from exc
                    log.info("blob fetch broke off; resuming", extra={"digest": digest, "at": have})
                    time.sleep(min(2.0, 0.2 * 2**failures))
        os.fsync(fd)
        got = f"sha256:{h.hexdigest()}"
        if got != digest:
            os.ftruncate(fd, 0)
            raise FetchError(
                f"blob {digest} from {self._url} failed verification (got {got}); the download was discarded",
                status=502,
            )


def _hash_prefix(fd: int) -> hashlib._Hash:
    """The sha256 state of the bytes already in the file (a resumed fetch)."""
    h = hashlib.sha256()
    with os.fdopen(os.dup(fd), "rb") as f:
        while chunk := f.read(8 * _CHUNK):
            h.update(chunk)
    return h
