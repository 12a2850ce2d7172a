"""ModelStore: importing a GGUF as a model, deleting models and collecting the blobs they leave."""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

from herd.gguf_meta import format_parameter_size, read_gguf_info
from herd.names import ModelName
from herd.store.errors import MissingBlob, ModelNotFound
from herd.store.layout import fsync_dir
from herd.store.manifests import (
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    ManifestStore,
)
from herd.store.model import StoredModel

logger = logging.getLogger(__name__)

# Go's GOARCH/GOOS spellings, which Ollama writes into the config blob.
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class ModelStore(ManifestStore):
    """Reads and writes models in an Ollama model directory (OLLAMA_MODELS)."""

    def import_gguf(
        self,
        name: ModelName,
        gguf: Path,
        *,
        template: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        link: bool = True,
    ) -> StoredModel:
        """Add a GGUF file to the store as ``name``, with optional template, system prompt and params.

        No template is derived from the GGUF's Jinja ``tokenizer.chat_template``: Ollama stores Go
        templates, and choosing one is the caller's business.
        """
        info = read_gguf_info(gguf)  # fail on a non-GGUF before copying gigabytes
        arch = info.architecture
        config: dict[str, Any] = {
            "model_format": "gguf",
            "model_family": arch,
            "model_families": [arch] if arch else None,
            "model_type": format_parameter_size(info.parameter_count),
            "file_type": info.file_type,
            "architecture": _GO_ARCH.get(platform.machine().lower(), platform.machine().lower()),
            "os": sys.platform if sys.platform != "win32" else "windows",
        }

        def write_layers() -> list[tuple[str, str, int]]:
            layers = [(MEDIA_MODEL, *self.write_blob_from_file(Path(gguf), link=link))]
            if template is not None:
                layers.append((MEDIA_TEMPLATE, *self.write_blob_bytes(template.encode())))
            if system is not None:
                layers.append((MEDIA_SYSTEM, *self.write_blob_bytes(system.encode())))
            if params:
                body = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                layers.append((MEDIA_PARAMS, *self.write_blob_bytes(body.encode())))
            config["rootfs"] = {"type": "layers", "diff_ids": [d for _, d, _ in layers]}
            return layers

        # Blobs are written outside the store lock (a copy can take minutes), so a concurrent delete of
        # another model sharing one of them can remove it before our manifest lands. Then write them
        # again holding the lock, which no delete can interleave with: one retry always suffices.
        try:
            return self.write_manifest(name, config, write_layers())
        except MissingBlob:
            logger.info("a blob of %s was removed concurrently; writing it again", name.display)
        with self._lock():
            return self.write_manifest(name, config, write_layers())

    # --- deleting ----------------------------------------------------------------------------------

    def _prune_empty_dirs(self, start: Path) -> None:
        """Remove now-empty directories from ``start`` up to (not including) ``manifests/``."""
        d = start
        while d != self.manifests_dir and self.manifests_dir in d.parents:
            try:
                d.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    logger.debug("cannot prune %s: %s", d, exc)
                if exc.errno != errno.ENOENT:
                    return
            d = d.parent

    def delete(self, name: ModelName) -> None:
        """Remove the manifest for ``name`` and every blob no other manifest references."""
        with self._lock():
            path = self._find_manifest(name)
            if path is None:
                raise ModelNotFound(name.display)
            mine = self._manifest_refs(path) or set()
            path.unlink()
            fsync_dir(path.parent)
            self._prune_empty_dirs(path.parent)

            others: set[str] = set()
            for _, other in self._iter_manifest_files():
                refs = self._manifest_refs(other)
                if refs is None:
                    if other.name.startswith("."):
                        continue  # a stale temp file from a crashed write, never a live manifest
                    # We cannot tell what an unreadable manifest needs; keeping blobs costs only disk.
                    logger.warning("not removing blobs: cannot read manifest %s", other)
                    return
                others |= refs
            for hexd in sorted(mine - others):
                try:
                    self.blob_path(f"sha256:{hexd}").unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    logger.warning("cannot remove blob sha256:%s: %s", hexd, exc)

    # --- model management (create, copy, blob uploads) -------------------------------------------

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the store lock across several writes (layers, then the manifest) so no delete interleaves."""
        return self._lock()

    def remove_unreferenced(self, hexds: set[str]) -> builtins.list[str]:
        """Remove those of ``hexds`` that no manifest references any more; returns the removed ones."""
        removed: list[str] = []
        with self._lock():
            others: set[str] = set()
            for _, path in self._iter_manifest_files():
                refs = self._manifest_refs(path)
                if refs is None:
                    if path.name.startswith("."):
                        continue  # a stale temp file from a crashed write, never a live manifest
                    logger.warning("not removing blobs: cannot read manifest %s", path)
                    return removed
                others |= refs
            for hexd in sorted(hexds - others):
                with contextlib.suppress(FileNotFoundError):
                    self.blob_path(f"sha256:{hexd}").unlink()
                    removed.append(hexd)
        return removed
