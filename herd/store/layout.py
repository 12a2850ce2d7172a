"""Ollama's on-disk layout: digests, the manifest and blob paths, walking manifests, the store lock."""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from herd.names import ModelName

logger = logging.getLogger(__name__)

# Same pattern as Ollama's GetBlobsPath: either separator, exactly 64 hex digits, nothing else.
_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def digest_hex(digest: str) -> str:
    """Validate a ``sha256:<hex>`` / ``sha256-<hex>`` digest and return its lower-case hex."""
    m = _DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise ValueError(f"invalid digest {digest!r}")
    return m.group(1).lower()


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (a rename) to disk; best effort on filesystems without support."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StoreLayout:
    """The directories of an Ollama model store, the paths inside them, and the lock writers share."""

    def __init__(self, root: Path) -> None:
        self._held = threading.local()  # this thread's depth of _lock holds
        self.root = Path(root)

    @property
    def manifests_dir(self) -> Path:
        """The ``manifests`` directory."""
        return self.root / "manifests"

    @property
    def blobs_dir(self) -> Path:
        """The ``blobs`` directory."""
        return self.root / "blobs"

    # --- paths -------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """The blob file for a digest; raises ValueError for anything but a well-formed sha256 digest."""
        return self.blobs_dir / f"sha256-{digest_hex(digest)}"

    def manifest_path(self, name: ModelName) -> Path:
        """Where the manifest for ``name`` lives with exactly this casing."""
        return self.manifests_dir.joinpath(*name.manifest_parts())

    def _find_manifest(self, name: ModelName) -> Path | None:
        """The manifest file for ``name``: the exact path, else a case-insensitive match."""
        exact = self.manifest_path(name)
        if exact.is_file():
            return exact
        level = [self.manifests_dir]
        for part in (p.lower() for p in name.manifest_parts()):
            found: list[Path] = []
            for parent in level:
                with contextlib.suppress(OSError), os.scandir(parent) as it:
                    found.extend(Path(e.path) for e in it if e.name.lower() == part)
            if not found:
                return None
            level = sorted(found)
        files = [p for p in level if p.is_file()]
        return files[0] if files else None

    def _iter_manifest_files(self) -> Iterator[tuple[tuple[str, str, str, str], Path]]:
        """Every file exactly four levels below ``manifests/``, as Ollama's ``*/*/*/*`` glob sees them."""

        def scan(path: str | Path) -> builtins.list[os.DirEntry[str]]:
            # One unreadable directory should hide only the models under it, not the whole store.
            try:
                with os.scandir(path) as it:
                    return sorted(it, key=lambda e: e.name)
            except FileNotFoundError:
                return []
            except OSError as exc:
                logger.warning("cannot list %s: %s", path, exc)
                return []

        for host in scan(self.manifests_dir):
            for ns in scan(host.path) if host.is_dir() else []:
                for model in scan(ns.path) if ns.is_dir() else []:
                    for tag in scan(model.path) if model.is_dir() else []:
                        if tag.is_file():
                            yield (host.name, ns.name, model.name, tag.name), Path(tag.path)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive flock on the root directory, shared by every process using this store.

        Re-entrant within a thread (import_gguf's slow path writes blobs and the manifest under one
        hold); other threads and processes wait, since each hold opens its own file description.
        """
        if getattr(self._held, "depth", 0):
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # Locking the directory itself avoids adding a lock file to a store Ollama also reads.
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0
        finally:
            os.close(fd)  # closing releases the lock
