"""Quantizing a GGUF with llama.cpp's own quantizer (llama_model_quantize), for /api/create's quantize."""

from __future__ import annotations

import logging
from pathlib import Path

import llama_cpp as llama

from workers.llama import init_backend

log = logging.getLogger(__name__)


class QuantizeError(RuntimeError):
    """llama.cpp refused to quantize (unknown type, unreadable source, a tensor shape it cannot block)."""


def ftype_for(type_name: str) -> int:
    """llama.cpp's LLAMA_FTYPE_MOSTLY_<type> constant for a type such as "Q4_K_M"."""
    value = getattr(llama, f"LLAMA_FTYPE_MOSTLY_{type_name.upper()}", None)
    if not isinstance(value, int):
        raise QuantizeError(f"llama.cpp has no quantization type {type_name!r}")
    return value


def quantize_gguf(source: Path, destination: Path, type_name: str, threads: int = 0) -> None:
    """Write ``source`` quantized to ``type_name`` at ``destination``; QuantizeError when llama.cpp fails.

    ``threads`` <= 0 lets llama.cpp use every core.
    """
    init_backend()
    params = llama.llama_model_quantize_default_params()
    params.ftype = ftype_for(type_name)
    params.nthread = threads
    log.info("quantizing", extra={"source": str(source), "type": type_name})
    rc = llama.llama_model_quantize(str(source).encode(), str(destination).encode(), params)
    if rc != 0 or not destination.is_file():
        destination.unlink(missing_ok=True)
        # llama.cpp logs the reason (at debug level through workers.llama's log hook).
        raise QuantizeError(f"llama.cpp could not quantize {source.name} to {type_name} (code {rc})")
