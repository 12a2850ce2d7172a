"""Building a model from an /api/create request: its layers, its config blob and its manifest.

Follows Ollama's server/create.go: the base layers come from an uploaded GGUF (``files``) or an
existing model (``from``); ``template``, ``system``, ``license`` and ``messages`` replace the base's
layer of that kind, ``parameters`` are merged over the base's (the request wins); the model layer is
quantized first when ``quantize`` asks for it. Progress objects are Ollama's: "parsing GGUF",
"quantizing F16 model to Q8_0", "using existing layer sha256:…" / "creating new layer sha256:…",
"writing manifest", "success".

Pure Python: the quantizer (llama.cpp) and the Go-template check are handed in by the store worker, so
the API can import this module for validation without pulling in llama_cpp.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.contracts import CreateSpec
from herd.gguf_meta import GGUFError, GGUFInfo, format_parameter_size, read_gguf_info
from herd.names import ModelName
from herd.store import (
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    MissingBlob,
    ModelNotFound,
    ModelStore,
    StoredModel,
)
from herd.store.temps import quantize_output

log = logging.getLogger(__name__)

# llama.cpp's quantization targets that Ollama's `quantize` accepts (upper-case, as ggml names them).
QUANTIZE_TYPES = (
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
)
# Only full-precision weights are quantized: re-quantizing a quantized model loses quality silently.
QUANTIZABLE_SOURCES = ("F16", "F32")
# Keys of the config blob derived from the model layer; everything else is carried over from the base.
_DERIVED_CONFIG = ("model_format", "model_family", "model_families", "model_type", "file_type", "rootfs")
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

Progress = Callable[[dict[str, Any]], None]
# (source GGUF, destination path, target type such as "Q8_0"); raises on failure.
Quantizer = Callable[[Path, Path, str], None]
TemplateCheck = Callable[[str], None]


class CreateError(Exception):
    """A create request that cannot be carried out; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class CreateCancelled(Exception):
    """The client went away before the manifest was written; nothing was published."""


def normalize_quantize(value: str | None) -> str | None:
    """A request's quantize type in llama.cpp's spelling ("q4_k_m" -> "Q4_K_M"); CreateError if unknown."""
    if not value:
        return None
    wanted = value.strip().upper()
    if wanted not in QUANTIZE_TYPES:
        raise CreateError(f"unsupported quantization type {value!r}; use one of {', '.join(QUANTIZE_TYPES)}")
    return wanted


def is_projector(info: GGUFInfo) -> bool:
    """Ollama's isProjectorGGUF: a GGUF of kind projector/mmproj, or a standalone vision encoder (a CLIP
    file with a vision or audio encoder and no text blocks), is a projector, not a model."""
    meta = info.metadata
    arch = info.architecture

    def count(key: str) -> int:
        value = meta.get(f"{arch}.{key}")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    if meta.get("general.type") in ("projector", "mmproj"):
        return True
    if count("block_count") == 0 and count("vision.block_count") > 0:
        return True
    return (
        arch == "clip"
        and count("block_count") == 0
        and bool(meta.get("clip.has_vision_encoder") or meta.get("clip.has_audio_encoder"))
    )


def _json_layer(value: Any) -> bytes:
    # Go's json.Encoder: compact, map keys sorted, a trailing newline.
    return (json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class ModelBuilder:
    """Carries out one create request against a store."""

    def __init__(
        self,
        store: ModelStore,
        *,
        progress: Progress,
        quantizer: Quantizer | None = None,
        check_template: TemplateCheck | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ):
        self.store = store
        self.progress = progress
        self.quantizer = quantizer
        self.check_template = check_template
        self.cancelled = cancelled
        # Digests of blobs this create wrote itself ("creating new layer"); all others existed already.
        self._created: set[str] = set()

    def _check_cancelled(self) -> None:
        if self.cancelled():
            raise CreateCancelled("the client went away")

    # --- base layers -------------------------------------------------------------------------------

    def _from_files(self, files: dict[str, str]) -> tuple[list[tuple[str, str, int]], dict[str, Any]]:
        # As Ollama: each GGUF is a model or, by its header, a projector (a vision model's second FROM).
        layers = [self._gguf_layer(fname, files[fname]) for fname in sorted(files)]
        models = [
            fname for fname, layer in zip(sorted(files), layers, strict=True) if layer[0] == MEDIA_MODEL
        ]
        if len(models) != 1:
            # Several models are a safetensors checkpoint (or a split GGUF): conversion is not done here.
            raise CreateError(
                f"files must name exactly one GGUF model (and any projectors), got {len(models)}: {models}"
            )
        return layers, {}

    def _gguf_layer(self, fname: str, digest: str) -> tuple[str, str, int]:
        """The layer for one uploaded GGUF: a projector by its header, else the model."""
        self.progress({"status": "parsing GGUF"})
        try:
            path = self.store.blob_path(digest)
        except ValueError as exc:
            raise CreateError(f"invalid digest {digest!r} for file {fname!r}") from exc
        if not path.is_file():
            raise CreateError(
                f"blob {digest} for file {fname!r} is not in the store; upload it to /api/blobs first"
            )
        try:
            info = read_gguf_info(path)
        except GGUFError as exc:
            raise CreateError(f"file {fname!r} ({digest}) is not a GGUF model: {exc}") from exc
        media = MEDIA_PROJECTOR if is_projector(info) else MEDIA_MODEL
        return media, f"sha256:{path.name.removeprefix('sha256-')}", path.stat().st_size

    def _adapters(
        self, layers: list[tuple[str, str, int]], adapters: dict[str, str]
    ) -> list[tuple[str, str, int]]:
        """ADAPTER files: a projector replaces the base's; LoRA adapters are not supported yet."""
        added = [self._gguf_layer(fname, adapters[fname]) for fname in sorted(adapters)]
        lora = [
            fname for fname, layer in zip(sorted(adapters), added, strict=True) if layer[0] != MEDIA_PROJECTOR
        ]
        if lora:
            raise CreateError(f"adapters are not supported yet: {lora}")
        return [layer for layer in layers if layer[0] != MEDIA_PROJECTOR] + added

    def _from_model(self, raw: str) -> tuple[list[tuple[str, str, int]], dict[str, Any]]:
        try:
            base = self.store.get(ModelName.parse(raw))
        except ModelNotFound as exc:
            raise CreateError(f"base model '{ModelName.parse(raw).display}' not found", status=404) from exc
        return list(base.layers), dict(base.config)

    # --- quantize ----------------------------------------------------------------------------------

    def _quantize(self, layers: list[tuple[str, str, int]], want: str) -> list[tuple[str, str, int]]:
        index = next(i for i, layer in enumerate(layers) if layer[0] == MEDIA_MODEL)
        _, digest, size = layers[index]
        source = self.store.blob_path(digest)
        have = read_gguf_info(source).file_type
        if have == want:
            return layers
        if have not in QUANTIZABLE_SOURCES:
            raise CreateError(f"quantization is only supported for F16 and F32 models, this one is {have}")
        if self.quantizer is None:
            raise CreateError("quantization is not available in this process", status=500)
        status = f"quantizing {have} model to {want}"
        self.progress({"status": status, "digest": "0", "total": size, "completed": 0})
        # Removed when the quantizer fails or the create is cancelled; locked so that a store worker
        # starting meanwhile leaves it alone, while one killed mid-quantize leaves it to the next start.
        with quantize_output(self.store) as out:
            self.quantizer(source, out, want)
            self._check_cancelled()
            existed = self._blob_exists_as(out)
            new_digest, new_size = self.store.write_blob_from_file(out, link=True)
        if not existed:
            self._created.add(new_digest)
        self.progress({"status": status, "digest": "0", "total": size, "completed": size})
        return [*layers[:index], (MEDIA_MODEL, new_digest, new_size), *layers[index + 1 :]]

    def _blob_exists_as(self, path: Path) -> bool:
        with open(path, "rb") as f:
            hexd = hashlib.file_digest(f, "sha256").hexdigest()
        return self.store.has_blob(f"sha256:{hexd}")

    # --- small layers ------------------------------------------------------------------------------

    def _layer(self, media: str, data: bytes) -> tuple[str, str, int]:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if not self.store.has_blob(digest):
            self.store.write_blob_bytes(data)
            self._created.add(digest)
        return media, digest, len(data)

    def _replace(
        self, layers: list[tuple[str, str, int]], media: str, blobs: list[bytes]
    ) -> list[tuple[str, str, int]]:
        kept = [layer for layer in layers if layer[0] != media]
        return kept + [self._layer(media, data) for data in blobs]

    def _params(
        self, layers: list[tuple[str, str, int]], params: dict[str, Any]
    ) -> list[tuple[str, str, int]]:
        merged = dict(params)
        for media, digest, _ in layers:
            if media != MEDIA_PARAMS:
                continue
            existing = json.loads(self.store.blob_path(digest).read_bytes())
            if isinstance(existing, dict):
                for key, value in existing.items():
                    merged.setdefault(key, value)
        if not merged:
            return layers
        return self._replace(layers, MEDIA_PARAMS, [_json_layer(merged)])

    # --- the whole create --------------------------------------------------------------------------

    def build(self, name: ModelName, spec: CreateSpec) -> StoredModel:
        """Write the model ``name`` described by ``spec``; the last progress object is "success"."""
        old_refs = self.store.blob_refs(name)
        if spec.from_model:
            layers, base_config = self._from_model(spec.from_model)
        elif spec.files:
            layers, base_config = self._from_files(spec.files)
        else:
            raise CreateError("neither 'from' or 'files' was specified")
        if not any(media == MEDIA_MODEL for media, _, _ in layers):
            raise CreateError("the base has no model layer")
        if spec.adapters:
            layers = self._adapters(layers, spec.adapters)
        self._check_cancelled()

        if spec.quantize:
            layers = self._quantize(layers, spec.quantize)
            self._check_cancelled()

        if spec.template and self.check_template is not None:
            self.check_template(spec.template)
        # Small layers and the manifest under one store lock: no delete can remove a blob in between.
        with self.store.exclusive():
            model = self._finish(name, spec, layers, base_config)
        # Like Ollama, layers only the replaced manifest used are removed now.
        stale = old_refs - self.store.blob_refs(name)
        if stale:
            self.store.remove_unreferenced(stale)
        self.progress({"status": "success"})
        return model

    def _finish(
        self,
        name: ModelName,
        spec: CreateSpec,
        layers: list[tuple[str, str, int]],
        base_config: dict[str, Any],
    ) -> StoredModel:
        """Add the request's own layers and write the config and the manifest."""
        if spec.template:
            layers = self._replace(layers, MEDIA_TEMPLATE, [spec.template.encode()])
        if spec.system:
            layers = self._replace(layers, MEDIA_SYSTEM, [spec.system.encode()])
        if spec.license is not None:
            layers = self._replace(layers, MEDIA_LICENSE, [text.encode() for text in spec.license])
        layers = self._params(layers, spec.parameters or {})
        if spec.messages:
            layers = self._replace(layers, MEDIA_MESSAGES, [_json_layer(spec.messages)])

        model_digest = next(d for m, d, _ in reversed(layers) if m == MEDIA_MODEL)
        config = self._config(base_config, read_gguf_info(self.store.blob_path(model_digest)))
        for _, digest, _ in layers:
            verb = "creating new" if digest in self._created else "using existing"
            self.progress({"status": f"{verb} layer {digest}"})
        self._check_cancelled()
        self.progress({"status": "writing manifest"})
        try:
            return self.store.write_manifest(name, config, layers)
        except MissingBlob as exc:
            # A concurrent delete removed a base blob after the base manifest was read.
            raise CreateError(f"{exc}; it was deleted while the model was being created", status=409) from exc

    @staticmethod
    def _config(base: dict[str, Any], info: GGUFInfo) -> dict[str, Any]:
        """The config blob: the base's extra keys, with the model facts read from the final GGUF."""
        config = {k: v for k, v in base.items() if k not in _DERIVED_CONFIG}
        arch = info.architecture
        config.update(
            model_format="gguf",
            model_family=arch,
            model_families=[arch] if arch else None,
            model_type=format_parameter_size(info.parameter_count),
            file_type=info.file_type,
        )
        config.setdefault(
            "architecture", _GO_ARCH.get(platform.machine().lower(), platform.machine().lower())
        )
        config.setdefault("os", sys.platform if sys.platform != "win32" else "windows")
        return config
