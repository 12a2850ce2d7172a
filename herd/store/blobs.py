"""Blob files: content-addressed writes through a temp file renamed into place, and pull partials."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

from herd.store.errors import StoreError
from herd.store.layout import StoreLayout, digest_hex, fsync_dir

logger = logging.getLogger(__name__)

_COPY_CHUNK = 8 * 1024 * 1024


class BlobStore(StoreLayout):
    """Writes blobs so that a reader never sees a partial one."""

    def _new_partial(self, hexd: str) -> Path:
        """A fresh temp name beside the final blob."""
        return self.blobs_dir / f"sha256-{hexd}-partial-{secrets.token_hex(8)}"

    def _blob_is_complete(self, hexd: str, size: int) -> bool:
        """Whether the final blob already exists with the expected size."""
        try:
            return self.blob_path(f"sha256:{hexd}").stat().st_size == size
        except OSError:
            return False

    def _publish(self, partial: Path, hexd: str) -> None:
        """Rename a finished partial blob to its final name."""
        os.replace(partial, self.blob_path(f"sha256:{hexd}"))
        fsync_dir(self.blobs_dir)

    def write_blob_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data`` as a blob; returns ``("sha256:<hex>", size)``. Idempotent."""
        hexd = hashlib.sha256(data).hexdigest()
        if self._blob_is_complete(hexd, len(data)):
            return f"sha256:{hexd}", len(data)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        partial = self._new_partial(hexd)
        try:
            with open(partial, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._publish(partial, hexd)
        finally:
            partial.unlink(missing_ok=True)
        return f"sha256:{hexd}", len(data)

    def write_blob_from_file(self, src: Path, *, link: bool = True) -> tuple[str, int]:
        """Store the file ``src`` as a blob, hard-linked when possible; returns ``("sha256:<hex>", size)``.

        A hard link shares the inode with ``src``, so editing ``src`` in place afterwards would change
        the blob too; pass ``link=False`` when the source is not going to stay untouched.
        """
        src = Path(src)
        with open(src, "rb") as f:
            before = os.fstat(f.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise StoreError(f"{src} is not a regular file")
            hexd = hashlib.file_digest(f, "sha256").hexdigest()
            after = os.fstat(f.fileno())
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise StoreError(f"{src} changed while it was being hashed")
        size = after.st_size
        digest = f"sha256:{hexd}"
        if self._blob_is_complete(hexd, size):
            return digest, size

        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        partial = self._new_partial(hexd)
        try:
            linked = False
            if link:
                try:
                    os.link(src, partial)
                    linked = True
                except OSError as exc:
                    # EXDEV (another filesystem), EPERM (protected_hardlinks) etc.: fall back to a copy.
                    logger.debug("cannot hard-link %s into the store (%s); copying", src, exc)
            if linked:
                st = os.stat(partial)
                if (st.st_ino, st.st_size, st.st_mtime_ns) != (after.st_ino, size, after.st_mtime_ns):
                    raise StoreError(f"{src} changed while it was being imported")
            else:
                self._copy_verified(src, partial, hexd)
            self._publish(partial, hexd)
        finally:
            partial.unlink(missing_ok=True)
        return digest, size

    def _copy_verified(self, src: Path, dst: Path, hexd: str) -> None:
        """Copy ``src`` to the new file ``dst``, hashing on the way to prove it is still ``hexd``."""
        h = hashlib.sha256()
        buf = bytearray(_COPY_CHUNK)
        view = memoryview(buf)
        with open(src, "rb") as fi, open(dst, "xb") as fo:
            while n := fi.readinto(buf):
                h.update(view[:n])
                fo.write(view[:n])
            fo.flush()
            os.fsync(fo.fileno())
        if h.hexdigest() != hexd:
            raise StoreError(f"{src} changed while it was being copied")

    def has_blob(self, digest: str) -> bool:
        """Whether the blob for ``digest`` is in the store; ValueError for a malformed digest."""
        return self.blob_path(digest).is_file()

    def new_blob_partial(self, digest: str) -> Path:
        """A fresh temp path beside the blob for ``digest``, for a caller that writes and verifies it."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        return self._new_partial(digest_hex(digest))

    def publish_blob(self, partial: Path, digest: str) -> None:
        """Rename a partial the caller has verified to hash to ``digest`` to its final blob name."""
        self._publish(partial, digest_hex(digest))

    # --- resumable downloads (pulls) ---------------------------------------------------------------

    def resumable_partial_path(self, digest: str) -> Path:
        """A stable partial file for a blob being downloaded, so an interrupted pull can resume it.

        Unlike the random ``-partial-<hex>`` temp names above, every puller of one digest agrees on
        this path, which lets them share (and lock) one download.
        """
        return self.blobs_dir / f"sha256-{digest_hex(digest)}-partial"

    def blob_is_complete(self, digest: str, size: int) -> bool:
        """Whether the blob for ``digest`` is in the store with exactly ``size`` bytes."""
        return self._blob_is_complete(digest_hex(digest), size)

    def publish_verified(self, partial: Path, digest: str) -> Path:
        """Rename ``partial``, whose sha256 the caller has verified to be ``digest``, to its blob name."""
        self._publish(partial, digest_hex(digest))
        return self.blob_path(digest)
