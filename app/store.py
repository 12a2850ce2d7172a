"""The model store, in Ollama's on-disk layout so an existing OLLAMA_MODELS directory is served unchanged.

Layout under the root::

    manifests/<host>/<namespace>/<model>/<tag>   Docker v2 manifest JSON
    blobs/sha256-<64 hex>                         content-addressed layers and config

Decisions worth knowing:

* Lookups are case-insensitive like Ollama's (``Name.EqualFold``): the exact path is tried first, then a
  case-folded scan. Names keep the casing they have on disk, and writing a name that already exists in
  another casing overwrites that manifest rather than creating a second one (Ollama's getExistingName).
* ``list()`` skips (and logs) manifests it cannot use; ``get()`` raises :class:`ModelNotFound` when no
  manifest file exists and :class:`StoreError` when one exists but is broken (bad JSON, a missing or
  truncated blob, no model layer), so the caller can tell "no such model" from "the store is damaged".
* ``size`` is the sum of the layer sizes plus the config blob, which is what Ollama's Manifest.Size()
  reports in /api/tags.
* Writers never expose partial state: blobs are written to ``sha256-<hex>-partial-<random>`` and renamed,
  a manifest is written to a hidden temp file beside it and renamed, and only after every blob it names
  exists. Manifest writes and deletes hold an flock on the root directory so a delete's garbage
  collection cannot race a new manifest that shares its blobs.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.gguf_meta import GGUFError, GGUFInfo, format_parameter_size, read_gguf_info
from app.names import InvalidModelName, ModelName

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

# Same pattern as Ollama's GetBlobsPath: either separator, exactly 64 hex digits, nothing else.
_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_COPY_CHUNK = 8 * 1024 * 1024

# Go's GOARCH/GOOS spellings, which Ollama writes into the config blob.
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class ModelNotFound(LookupError):
    """No manifest exists for the requested model name."""

    def __init__(self, name: str) -> None:
        # Ollama's message quotes the name exactly as the client sent it.
        super().__init__(f"model '{name}' not found")
        self.name = name


class StoreError(RuntimeError):
    """The store holds something unusable (a broken manifest, a missing blob) or a write failed."""


class MissingBlob(StoreError):
    """A manifest was about to name a blob that is not (or no longer) in the store."""


def _digest_hex(digest: str) -> str:
    """Validate a ``sha256:<hex>`` / ``sha256-<hex>`` digest and return its lower-case hex."""
    m = _DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise ValueError(f"invalid digest {digest!r}")
    return m.group(1).lower()


def _fsync_dir(path: Path) -> None:
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


@dataclass
class StoredModel:
    """One model in the store: its manifest, resolved to blob paths and small layer contents."""

    name: ModelName
    digest: str
    size: int
    modified_at: datetime
    model_path: Path
    template: str | None = None
    system: str | None = None
    license: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    adapters: list[Path] = field(default_factory=list)
    projectors: list[Path] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    manifest_path: Path | None = None
    # The "from" of the model layer, which Ollama reports as details.parent_model.
    parent_model: str = ""
    # (media_type, "sha256:<hex>", size) for every layer, in manifest order.
    layers: list[tuple[str, str, int]] = field(default_factory=list)
    _gguf: GGUFInfo | None = field(default=None, init=False, repr=False, compare=False)

    def gguf_info(self) -> GGUFInfo:
        """The GGUF header of the model blob, read once and cached."""
        if self._gguf is None:
            self._gguf = read_gguf_info(self.model_path)
        return self._gguf

    def details(self) -> dict[str, Any]:
        """Ollama's ``details`` object, from the config blob with the GGUF header as a fallback."""
        cfg = self.config
        fmt = cfg.get("model_format") or ""
        family = cfg.get("model_family") or ""
        families = cfg.get("model_families")
        parameter_size = cfg.get("model_type") or ""
        quantization = cfg.get("file_type") or ""
        # Stores written by old Ollama versions or other tools may lack config fields; the GGUF header
        # holds the same facts, so read it only when something is missing.
        if not (fmt and family and parameter_size and quantization):
            try:
                info = self.gguf_info()
            except (OSError, GGUFError) as exc:
                logger.warning("cannot read GGUF header of %s: %s", self.name.display, exc)
            else:
                fmt = fmt or "gguf"
                family = family or info.architecture
                parameter_size = parameter_size or format_parameter_size(info.parameter_count)
                quantization = quantization or (info.file_type if info.file_type != "unknown" else "")
        if families is None and family:
            families = [family]
        return {
            "parent_model": self.parent_model,
            "format": fmt,
            "family": family,
            "families": families,
            "parameter_size": parameter_size,
            "quantization_level": quantization,
        }


class ModelStore:
    """Reads and writes models in an Ollama model directory (OLLAMA_MODELS)."""

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
        return self.blobs_dir / f"sha256-{_digest_hex(digest)}"

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
                hexd = _digest_hex(digest if isinstance(digest, str) else "")
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

    # --- writing -----------------------------------------------------------------------------------

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
        _fsync_dir(self.blobs_dir)

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
            norm.append((media, f"sha256:{_digest_hex(digest)}", size))
        if not any(media == MEDIA_MODEL for media, _, _ in norm):
            raise ValueError("a manifest needs a model layer")

        cfg = dict(config)
        cfg.setdefault("rootfs", {"type": "layers", "diff_ids": [d for _, d, _ in norm]})
        # Compact, like Go's json.Marshal, so the bytes (and digests) look like Ollama's own.
        cfg_bytes = json.dumps(cfg, separators=(",", ":"), ensure_ascii=False).encode()

        with self._lock():
            for _, digest, size in norm:
                if not self._blob_is_complete(_digest_hex(digest), size):
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
                if not self._blob_is_complete(_digest_hex(digest), size):
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
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        on_disk = ModelName.from_parts(*path.relative_to(self.manifests_dir).parts)
        return self._load(path, on_disk)

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
                    refs.add(_digest_hex(item["digest"]))
        return refs

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
            _fsync_dir(path.parent)
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

    def has_blob(self, digest: str) -> bool:
        """Whether the blob for ``digest`` is in the store; ValueError for a malformed digest."""
        return self.blob_path(digest).is_file()

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

    def new_blob_partial(self, digest: str) -> Path:
        """A fresh temp path beside the blob for ``digest``, for a caller that writes and verifies it."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        return self._new_partial(_digest_hex(digest))

    def publish_blob(self, partial: Path, digest: str) -> None:
        """Rename a partial the caller has verified to hash to ``digest`` to its final blob name."""
        self._publish(partial, _digest_hex(digest))

    # --- resumable downloads (pulls) ---------------------------------------------------------------

    def resumable_partial_path(self, digest: str) -> Path:
        """A stable partial file for a blob being downloaded, so an interrupted pull can resume it.

        Unlike the random ``-partial-<hex>`` temp names above, every puller of one digest agrees on
        this path, which lets them share (and lock) one download.
        """
        return self.blobs_dir / f"sha256-{_digest_hex(digest)}-partial"

    def blob_is_complete(self, digest: str, size: int) -> bool:
        """Whether the blob for ``digest`` is in the store with exactly ``size`` bytes."""
        return self._blob_is_complete(_digest_hex(digest), size)

    def publish_verified(self, partial: Path, digest: str) -> Path:
        """Rename ``partial``, whose sha256 the caller has verified to be ``digest``, to its blob name."""
        self._publish(partial, _digest_hex(digest))
        return self.blob_path(digest)
