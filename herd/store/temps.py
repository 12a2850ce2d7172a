"""Temporary files in the store: the quantizer's locked output, and removing what a killed process left.

What may be left behind, and what happens to it at store-worker start (:func:`remove_leftovers`):

* ``blobs/quantize-<hex>.partial``: a create's quantizer output (as large as the model). Its job holds
  an flock on it while it exists, so a file nobody has locked belongs to no running job: removed.
* ``blobs/sha256-<hex>-partial-<hex>`` (a blob being written or uploaded through /api/blobs) and
  ``manifests/**/.<tag>.partial-<hex>`` (a manifest being replaced): written without a lock, by the API
  as well, so removed only once untouched for an hour (an upload writes as bytes arrive).
* ``blobs/sha256-<hex>-partial`` and its ``.parts`` state: a pull's download, which the next pull of
  that blob resumes. Kept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from herd.store import ModelStore

logger = logging.getLogger(__name__)

QUANTIZE_GLOB = "quantize-*.partial"
# An unlocked temp file untouched for this long belongs to a process that died.
UNLOCKED_TEMP_AGE_S = 3600.0
_BLOB_TEMP = re.compile(r"sha256-[0-9a-f]{64}-partial-[0-9a-f]{16}")
_MANIFEST_TEMP = re.compile(r"\..+\.partial-[0-9a-f]{16}")


@contextlib.contextmanager
def quantize_output(store: ModelStore) -> Iterator[Path]:
    """A fresh ``blobs/quantize-<hex>.partial``, flocked while the block runs and removed after it."""
    store.blobs_dir.mkdir(parents=True, exist_ok=True)
    while True:
        # In the blobs directory so the result can be hard-linked into place; never a valid blob name.
        path = store.blobs_dir / f"quantize-{secrets.token_hex(8)}.partial"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # A starting store worker may have removed the file between its creation and our lock.
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        # llama.cpp truncates and writes this very inode, so the lock covers the output as it grows.
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _remove_if_unlocked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False  # a running create's quantizer is writing it
            raise
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def _remove_if_old(path: Path, now: float) -> bool:
    try:
        if now - path.stat().st_mtime < UNLOCKED_TEMP_AGE_S:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def remove_leftovers(store: ModelStore) -> list[Path]:
    """Remove the temp files that killed jobs and processes left in ``store``; returns what went."""
    removed: list[Path] = []
    now = time.time()
    if store.blobs_dir.is_dir():
        for path in sorted(store.blobs_dir.glob(QUANTIZE_GLOB)):
            if _remove_if_unlocked(path):
                removed.append(path)
        for path in sorted(store.blobs_dir.iterdir()):
            if _BLOB_TEMP.fullmatch(path.name) and _remove_if_old(path, now):
                removed.append(path)
    if store.manifests_dir.is_dir():
        for path in sorted(store.manifests_dir.rglob(".*.partial-*")):
            if _MANIFEST_TEMP.fullmatch(path.name) and path.is_file() and _remove_if_old(path, now):
                removed.append(path)
    for path in removed:
        logger.info("removed a leftover temp file", extra={"path": str(path)})
    return removed
