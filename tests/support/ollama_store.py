"""Write a model into a directory exactly as Ollama itself lays it out, without Herd's store code."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any


def _blob(root: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / f"sha256-{digest}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_ollama_model(
    root: Path,
    name: tuple[str, str, str, str],
    gguf: Path,
    *,
    template: str | None = None,
    system: str | None = None,
    params: dict[str, Any] | None = None,
) -> Path:
    """Blobs as sha256-<hex>, a Docker v2 manifest under manifests/<host>/<ns>/<model>/<tag>; returns it."""
    model_bytes = gguf.read_bytes()
    layers = [{"mediaType": "application/vnd.ollama.image.model", **_blob(root, model_bytes)}]
    if template is not None:
        layers.append(
            {"mediaType": "application/vnd.ollama.image.template", **_blob(root, template.encode())}
        )
    if system is not None:
        layers.append({"mediaType": "application/vnd.ollama.image.system", **_blob(root, system.encode())})
    if params is not None:
        layers.append(
            {"mediaType": "application/vnd.ollama.image.params", **_blob(root, json.dumps(params).encode())}
        )
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "0.1M",
        "file_type": "F32",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            **_blob(root, json.dumps(config).encode()),
        },
        "layers": layers,
    }
    path = root / "manifests" / Path(*name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, separators=(",", ":")))
    return path


def copy_store(src: Path, dst: Path) -> None:
    """A copy of a whole store (tests that mutate one keep the session's intact)."""
    shutil.copytree(src, dst)
