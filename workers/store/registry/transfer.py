"""Blob downloads: ranged parallel parts, resumable from a partial file, one download per digest.

A blob is downloaded into the store's stable partial file ``blobs/sha256-<hex>-partial`` (sparse,
preallocated to the blob's size) by up to ``concurrency`` ranged GETs at once. How far each part got is
kept beside it in ``sha256-<hex>-partial.parts`` (JSON), so an interrupted pull, in this process or a
later one, resumes every part where it stopped instead of starting over.

An exclusive flock on the partial file makes the download single-flight across processes: a second
pull of the same digest waits for the first and then finds the blob published. Publishing is the
separate steps :func:`verify_partial` (the partial's sha256 is checked; one that fails is deleted with its
state, so nothing of it stays in the store) and :func:`publish` (the rename to its blob name).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import httpx

from herd.store import ModelStore
from workers.store.registry.client import RegistryClient, response_error
from workers.store.registry.errors import RegistryCancelled, RegistryError
from workers.store.registry.reference import Reference
from workers.store.registry.settings import RegistrySettings

logger = logging.getLogger(__name__)

_STATE_EVERY_S = 0.5
_POLL_S = 0.1


@dataclass
class _Part:
    """Bytes ``offset .. offset+length`` of the blob, of which the first ``done`` are on disk."""

    offset: int
    length: int
    done: int = 0


def _state_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".parts")


def plan_parts(size: int, part_size: int) -> list[_Part]:
    if size == 0:
        return [_Part(0, 0)]  # an empty blob (an empty system prompt layer): nothing to fetch
    count = -(-size // part_size)
    base = -(-size // count)
    return [_Part(offset=o, length=min(base, size - o)) for o in range(0, size, base)]


def _load_parts(partial: Path, digest: str, size: int) -> list[_Part] | None:
    """The saved progress of an earlier download of this blob, if it matches and is usable."""
    try:
        doc = json.loads(_state_path(partial).read_text())
        if doc.get("digest") != digest or doc.get("size") != size:
            return None
        parts = [_Part(int(o), int(n), int(d)) for o, n, d in doc["parts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    covered = sum(p.length for p in parts)
    if covered != size or any(not 0 <= p.done <= p.length for p in parts):
        return None
    return parts


def _save_parts(partial: Path, digest: str, size: int, parts: list[_Part]) -> None:
    state = _state_path(partial)
    tmp = state.with_name(state.name + ".tmp")
    doc = {"digest": digest, "size": size, "parts": [[p.offset, p.length, p.done] for p in parts]}
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, state)


def _discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    _state_path(partial).unlink(missing_ok=True)


@contextlib.contextmanager
def _locked_partial(
    partial: Path, cancelled: Callable[[], bool], waiting: Callable[[], None]
) -> Iterator[int]:
    """Open and exclusively flock the partial file, the same inode that is at ``partial`` now.

    Whoever held the lock before may have published (renamed) or discarded (unlinked) the file we
    opened, so after locking we check that the path still names our inode, and start over if not.
    """
    partial.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancelled():
                        raise RegistryCancelled("pull") from None
                    waiting()
                    time.sleep(0.2)
            try:
                same = os.stat(partial).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)  # also releases the lock


class _Download:
    """One blob's parts, fetched by a thread pool into the locked partial file."""

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        digest: str,
        size: int,
        fd: int,
        parts: list[_Part],
        settings: RegistrySettings,
        cancelled: Callable[[], bool],
    ) -> None:
        self.client, self.ref, self.digest, self.size, self.fd = client, ref, digest, size, fd
        self.parts, self.settings, self.cancelled = parts, settings, cancelled
        self.stop = threading.Event()

    def done(self) -> int:
        return sum(p.done for p in self.parts)

    def fetch_part(self, part: _Part) -> None:
        """Download what is missing of ``part``, resuming after a broken connection up to `retries` times."""
        failures = 0
        while part.done < part.length:
            if self.stop.is_set():
                return
            start = part.offset + part.done
            end = part.offset + part.length - 1
            before = part.done
            try:
                self._fetch_range(part, start, end)
            except (httpx.TransportError, RegistryError) as exc:
                if isinstance(exc, RegistryCancelled) or (
                    isinstance(exc, RegistryError) and exc.status not in (502, 504)
                ):
                    raise
                # A failure after some headway starts the count again, so a flaky link that keeps
                # moving cannot fail a long download; retries=0 still fails on the first break.
                failures = 1 if part.done > before else failures + 1
                if failures > self.settings.retries:
                    if isinstance(exc, RegistryError):
                        raise
                    raise self.client.translate(exc, httpx.URL(self.ref.blob_url(self.digest))) from exc
                logger.info("blob %s: bytes %d-%d broke off (%s); resuming", self.digest, start, end, exc)
                time.sleep(min(2.0, 0.2 * 2**failures))

    def _fetch_range(self, part: _Part, start: int, end: int) -> None:
        headers = {"Range": f"bytes={start}-{end}"}
        scope = f"repository:{self.ref.repository}:pull"
        with self.client.open("GET", self.ref.blob_url(self.digest), scope=scope, headers=headers) as r:
            if r.status_code == 200 and not (start == 0 and end == self.size - 1):
                # A registry that ignores Range sends the whole blob: only usable for a one-part plan.
                raise RegistryError(
                    f"{self.ref.host}: blob {self.digest} was sent whole to a ranged request "
                    f"(bytes={start}-{end}); set HERD_PULL_PART_SIZE above {self.size} for this registry",
                    status=502,
                )
            if r.status_code not in (200, 206):
                raise response_error(r, f"blob {self.digest}")
            pos = start
            for chunk in r.iter_bytes():
                if self.stop.is_set():
                    return
                if self.cancelled():
                    raise RegistryCancelled("pull")
                room = end + 1 - pos
                if len(chunk) > room:
                    chunk = chunk[:room]  # never write past the part (a server sending extra bytes)
                os.pwrite(self.fd, chunk, pos)
                pos += len(chunk)
                part.done = pos - part.offset
                if room <= len(chunk):
                    break
        if part.done < part.length:
            raise httpx.RemoteProtocolError(
                f"blob {self.digest}: connection closed at byte {pos} of part {start}-{end}"
            )


def download_blob(
    client: RegistryClient,
    store: ModelStore,
    ref: Reference,
    digest: str,
    size: int,
    *,
    settings: RegistrySettings,
    report: Callable[[int], None],
    cancelled: Callable[[], bool],
) -> None:
    """Make the partial file of ``digest`` complete (or find the blob already published)."""
    if store.blob_is_complete(digest, size):
        report(size)
        return
    partial = store.resumable_partial_path(digest)

    def waiting() -> None:
        # Another pull holds the download: show its progress from its saved state.
        saved = _load_parts(partial, digest, size)
        if saved is not None:
            report(sum(p.done for p in saved))

    with _locked_partial(partial, cancelled, waiting) as fd:
        if store.blob_is_complete(digest, size):
            _discard(partial)  # the one we created after the holder published: never used
            report(size)
            return
        parts = _load_parts(partial, digest, size)
        if parts is None or os.fstat(fd).st_size != size:
            parts = plan_parts(size, settings.part_size)
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
        resumed = sum(p.done for p in parts)
        if resumed:
            logger.info("blob %s: resuming at %d of %d bytes", digest, resumed, size)
        report(resumed)
        dl = _Download(client, ref, digest, size, fd, parts, settings, cancelled)
        last_save = time.monotonic()
        with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="pull") as pool:
            futures: list[Future[None]] = [pool.submit(dl.fetch_part, p) for p in parts if p.done < p.length]
            try:
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_EXCEPTION)
                    for f in finished:
                        f.result()  # the first failure stops the download
                    report(dl.done())
                    if time.monotonic() - last_save >= _STATE_EVERY_S:
                        _save_parts(partial, digest, size, parts)
                        last_save = time.monotonic()
            finally:
                dl.stop.set()
                for f in futures:
                    with contextlib.suppress(BaseException):
                        f.result()
                _save_parts(partial, digest, size, parts)
        os.fsync(fd)
        report(size)


def verify_partial(store: ModelStore, ref: Reference, digest: str, size: int) -> None:
    """Check the partial file's size and sha256; delete it (and its state) if they do not match."""
    if store.blob_is_complete(digest, size):
        return
    partial = store.resumable_partial_path(digest)
    with _locked_partial(partial, lambda: False, lambda: None) as fd:
        if store.blob_is_complete(digest, size):
            _discard(partial)
            return
        h = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb") as f:
            while chunk := f.read(8 * 1024 * 1024):
                h.update(chunk)
            got = f.tell()
        if got != size or f"sha256:{h.hexdigest()}" != digest:
            _discard(partial)
            raise RegistryError(
                f"{ref.host}: blob {digest} failed verification (got sha256:{h.hexdigest()}, "
                f"{got} bytes); the download was discarded",
                status=400,
            )


def publish(store: ModelStore, digest: str, size: int) -> None:
    """Rename a verified partial file to its blob name (a no-op when another pull published it)."""
    if store.blob_is_complete(digest, size):
        return
    partial = store.resumable_partial_path(digest)
    with _locked_partial(partial, lambda: False, lambda: None):
        if store.blob_is_complete(digest, size):
            _discard(partial)
            return
        store.publish_verified(partial, digest)
        _state_path(partial).unlink(missing_ok=True)
