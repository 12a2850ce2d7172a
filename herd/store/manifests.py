"""Manifests: their media types, reading one into a StoredModel, listing, and atomic writes."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from herd.names import InvalidModelName, ModelName
from herd.store.blobs import BlobStore
from herd.store.errors import MissingBlob, ModelNotFound, StoreError
from herd.store.layout import digest_hex, fsync_dir
from herd.store.model import StoredModel

logger = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"


class ManifestStore(BlobStore):
    """Reads, lists and writes manifests over the blobs they name."""

    # --- reading -----------------------------------------------------------------------------------

    def _read_blob_text(self, digest: str) -> str:
        """A text layer's contents."""
        return self.blob_path(digest).read_bytes().decode("utf-8", errors="replace")

    def _load(self, path: Path, name: ModelName) -> StoredModel:
        """Parse and resolve one manifest; raises StoreError if it cannot be served."""
        try:
            raw = path.read_bytes()
            st = os.stat(path)
        except OSError as exc:
            raise StoreError(f"cannot read manifest for {name.display}: {exc}") from exc
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"manifest for {name.display} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
            raise StoreError(f"manifest for {name.display} has no layer list")

        layers: list[tuple[str, str, int, str]] = []
        for item in doc["layers"]:
            if not isinstance(item, dict):
                raise StoreError(f"manifest for {name.display} has a malformed layer")
            media, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
            if not isinstance(media, str) or not isinstance(size, int) or isinstance(size, bool):
                raise StoreError(f"manifest for {name.display} has a malformed layer")
            try:
                hexd = digest_hex(digest if isinstance(digest, str) else "")
            except ValueError as exc:
                raise StoreError(f"manifest for {name.display}: {exc}") from exc
            blob = self.blob_path(f"sha256:{hexd}")
            try:
                blob_size = blob.stat().st_size
            except OSError as exc:
                raise StoreError(
                    f"manifest for {name.display} references missing blob sha256:{hexd}"
                ) from exc
            if blob_size != size:
                # A short blob is a half-finished copy; serving it would fail much later and less clearly.
                raise StoreError(
                    f"blob sha256:{hexd} of {name.display} is {blob_size} bytes, manifest says {size}"
                )
            frm = item.get("from")
            layers.append((media, f"sha256:{hexd}", size, frm if isinstance(frm, str) else ""))

        config: dict[str, Any] = {}
        config_size = 0
        cfg_ref = doc.get("config")
        if isinstance(cfg_ref, dict):
            if isinstance(cfg_ref.get("size"), int) and not isinstance(cfg_ref.get("size"), bool):
                config_size = cfg_ref["size"]
            try:
                loaded = json.loads(self.blob_path(str(cfg_ref.get("digest"))).read_bytes())
            except (OSError, ValueError) as exc:
                logger.warning("config blob of %s unreadable, using {}: %s", name.display, exc)
            else:
                if isinstance(loaded, dict):
                    config = loaded

        model_path: Path | None = None
        sm = StoredModel(
            name=name,
            digest=hashlib.sha256(raw).hexdigest(),
            size=sum(s for _, _, s, _ in layers) + config_size,
            modified_at=datetime.fromtimestamp(st.st_mtime, tz=UTC),
            model_path=Path(),
            config=config,
            manifest_path=path,
            layers=[(m, d, s) for m, d, s, _ in layers],
        )
        try:
            for media, digest, _, frm in layers:
                blob = self.blob_path(digest)
                if media == MEDIA_MODEL:
                    # Ollama assigns in a loop, so with several model layers the last one wins.
                    model_path = blob
                    sm.parent_model = frm
                elif media == MEDIA_TEMPLATE:
                    sm.template = self._read_blob_text(digest)
                elif media == MEDIA_SYSTEM:
                    sm.system = self._read_blob_text(digest)
                elif media == MEDIA_LICENSE:
                    sm.license.append(self._read_blob_text(digest))
                elif media == MEDIA_PARAMS:
                    params = json.loads(blob.read_bytes())
                    if not isinstance(params, dict):
                        raise StoreError(f"params layer of {name.display} is not a JSON object")
                    sm.params = params
                elif media == MEDIA_MESSAGES:
                    messages = json.loads(blob.read_bytes())
                    if not isinstance(messages, list):
                        raise StoreError(f"messages layer of {name.display} is not a JSON list")
                    sm.messages = messages
                elif media == MEDIA_ADAPTER:
                    sm.adapters.append(blob)
                elif media == MEDIA_PROJECTOR:
                    sm.projectors.append(blob)
                else:
                    logger.debug("ignoring layer %s of %s", media, name.display)
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read a layer of {name.display}: {exc}") from exc
        if model_path is None:
            # Cloud/remote-only manifests carry no weights; this server has nothing to run for them.
            raise StoreError(f"manifest for {name.display} has no model layer")
        sm.model_path = model_path
        return sm

    def list(self) -> list[StoredModel]:
        """Every usable model, newest first like Ollama's /api/tags; broken manifests are logged and skipped."""
        models: list[StoredModel] = []
        for parts, path in self._iter_manifest_files():
            try:
                name = ModelName.from_parts(*parts)
            except InvalidModelName:
                # Our own in-flight manifest temp files start with "." and land here too.
                logger.debug("skipping %s: not a valid model name", path)
                continue
            try:
                models.append(self._load(path, name))
            except StoreError as exc:
                logger.warning("skipping model %s: %s", name.display, exc)
        models.sort(key=lambda m: m.name.display)
        models.sort(key=lambda m: m.modified_at, reverse=True)
        return models

    def get(self, name: ModelName, raw: str | None = None) -> StoredModel:
        """The model called ``name`` (case-insensitive); ModelNotFound if absent, StoreError if broken."""
        path = self._find_manifest(name)
        if path is None:
            raise ModelNotFound(raw if raw is not None else name.display)
        rel = path.relative_to(self.manifests_dir).parts
        try:
            on_disk = ModelName.from_parts(*rel)
        except (InvalidModelName, TypeError):
            raise ModelNotFound(raw if raw is not None else name.display) from None
        return self._load(path, on_disk)

    # --- writing -------------------------------------------------------------------------------------

    def write_manifest(
        self, name: ModelName, config: dict[str, Any], layers: builtins.list[tuple[str, str, int]]
    ) -> StoredModel:
        """Write the config blob and then, atomically and last, the manifest for ``name``."""
        norm: list[tuple[str, str, int]] = []
        for media, digest, size in layers:
            if not isinstance(media, str) or not media:
                raise ValueError(f"invalid layer media type {media!r}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"invalid layer size {size!r}")
            norm.append((media, f"sha256:{digest_hex(digest)}", size))
        if not any(media == MEDIA_MODEL for media, _, _ in norm):
            raise ValueError("a manifest needs a model layer")

        cfg = dict(config)
        cfg.setdefault("rootfs", {"type": "layers", "diff_ids": [d for _, d, _ in norm]})
        # Compact, like Go's json.Marshal, so the bytes (and digests) look like Ollama's own.
        cfg_bytes = json.dumps(cfg, separators=(",", ":"), ensure_ascii=False).encode()

        with self._lock():
            for _, digest, size in norm:
                if not self._blob_is_complete(digest_hex(digest), size):
                    raise MissingBlob(f"blob {digest} ({size} bytes) is not in the store")
            cfg_digest, cfg_size = self.write_blob_bytes(cfg_bytes)
            manifest = {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cfg_digest, "size": cfg_size},
                "layers": [{"mediaType": m, "digest": d, "size": s} for m, d, s in norm],
            }
            return self._replace_manifest(name, json.dumps(manifest, separators=(",", ":")).encode())

    def write_manifest_bytes(self, name: ModelName, raw: bytes) -> StoredModel:
        """Write ``raw`` (a manifest as a registry served it, or another model's) as ``name``, byte for byte.

        Pulls and copies keep the exact bytes so the manifest's own digest stays what the registry says.
        Every blob it names (config included) must already be in the store with its stated size.
        """
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"the manifest for {name.display} is not JSON: {exc}") from exc
        items = [doc.get("config"), *(doc.get("layers") or [])] if isinstance(doc, dict) else []
        if not items or not all(isinstance(i, dict) for i in items):
            raise StoreError(f"the manifest for {name.display} has no config or layers")
        with self._lock():
            for item in items:
                digest, size = item.get("digest"), item.get("size")
                if not isinstance(digest, str) or not isinstance(size, int):
                    raise StoreError(f"the manifest for {name.display} has a layer without digest/size")
                if not self._blob_is_complete(digest_hex(digest), size):
                    raise MissingBlob(f"blob {digest} ({size} bytes) is not in the store")
            return self._replace_manifest(name, raw)

    def _replace_manifest(self, name: ModelName, raw: bytes) -> StoredModel:
        """Atomically put ``raw`` at ``name``'s manifest path (the caller holds the store lock)."""
        path = self._find_manifest(name) or self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A leading "." makes the temp name an invalid tag, so neither we nor Ollama list it.
        tmp = path.parent / f".{path.name}.partial-{secrets.token_hex(8)}"
        try:
            with open(tmp, "xb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        on_disk = ModelName.from_parts(*path.relative_to(self.manifests_dir).parts)
        return self._load(path, on_disk)

    # --- references ---------------------------------------------------------------------------------

    def _manifest_refs(self, path: Path) -> set[str] | None:
        """Hex digests a manifest file references (config and layers); None if it cannot be parsed."""
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        refs: set[str] = set()
        items = [doc.get("config")] + (doc["layers"] if isinstance(doc.get("layers"), list) else [])
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("digest"), str):
                with contextlib.suppress(ValueError):
                    refs.add(digest_hex(item["digest"]))
        return refs

    def manifest_bytes(self, name: ModelName) -> bytes:
        """The manifest of ``name`` exactly as stored (for copies and pushes); ModelNotFound if absent."""
        path = self._find_manifest(name)
        if path is None:
            raise ModelNotFound(name.display)
        return path.read_bytes()

    def blob_refs(self, name: ModelName) -> set[str]:
        """Hex digests the manifest of ``name`` references (config included); empty when it has none."""
        path = self._find_manifest(name)
        return (self._manifest_refs(path) or set()) if path is not None else set()
