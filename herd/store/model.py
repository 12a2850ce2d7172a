"""One model in the store, as a manifest resolved to blob paths, with Ollama's ``details``."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from herd.gguf_meta import GGUFError, GGUFInfo, format_parameter_size, read_gguf_info
from herd.names import ModelName

logger = logging.getLogger(__name__)


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
        """The GGUF header of the model blob, read once per blob and process (see _blob_gguf_info)."""
        if self._gguf is None:
            stat = os.stat(self.model_path)
            self._gguf = _blob_gguf_info(str(self.model_path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
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


@functools.lru_cache(maxsize=64)
def _blob_gguf_info(path: str, inode: int, size: int, mtime_ns: int) -> GGUFInfo:
    """A blob's GGUF header, kept for the process: a worker resolves its model afresh for every job, and
    skipping a large vocabulary's arrays costs ~100 ms a time on the bundled Gemma. Blobs are named by
    their digest and never rewritten; the stat fields in the key still catch a file replaced in place."""
    return read_gguf_info(path)
