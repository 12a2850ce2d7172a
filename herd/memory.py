"""How much memory a model needs, and how much a worker has: the numbers eviction and placement use.

The estimate is read from the GGUF header alone (no llama_cpp), so the API's placement and the worker's
admission agree: weights (the file's size, plus what llama.cpp adds when it repacks them for the CPU),
the KV cache for num_ctx × num_parallel cells in f16, and the output and compute buffers. It errs on the
large side: a model that is said to fit must fit.

The budget: HERD_MEMORY_LIMIT when set, else what the device has free now plus what this worker's own
models already take (they would be given back by eviction). On CPU "free" is MemAvailable; on a GPU it is
the free VRAM NVML reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from herd.gguf_meta import GGUFInfo

log = logging.getLogger(__name__)

MIB = 1 << 20
GIB = 1 << 30
# Measured with Gemma 3 270M on the CPU: resident weights ≈ 1.2 × the file (repacked tensors and mmap
# slack), a context's RSS ≈ its KV cache plus a few MiB.
_WEIGHTS_FACTOR = 1.25
_FIXED_OVERHEAD = 64 * MIB
_KV_BYTES_PER_VALUE = 2  # f16 cache, llama.cpp's default
_LARGE_VOCAB = 262_144  # Gemma's; larger than most


@dataclass(frozen=True)
class Estimate:
    """One model's memory need at a given context size and parallelism."""

    weights: int
    kv_cache: int
    buffers: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers


def _int(metadata: dict[str, Any], key: str) -> int | None:
    value = metadata.get(key)
    if isinstance(value, list):  # per-layer arrays (e.g. head_count_kv): the largest bounds the cache
        value = max((v for v in value if isinstance(v, int)), default=None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def kv_bytes_per_token(info: GGUFInfo) -> int:
    """K and V cache bytes per token across all layers, as llama.cpp sizes an f16 cache."""
    meta, arch = info.metadata, info.architecture
    n_layer = _int(meta, f"{arch}.block_count") or 0
    n_embd = _int(meta, f"{arch}.embedding_length") or 0
    n_head = _int(meta, f"{arch}.attention.head_count") or 1
    n_head_kv = _int(meta, f"{arch}.attention.head_count_kv") or n_head
    head_k = _int(meta, f"{arch}.attention.key_length") or n_embd // max(n_head, 1)
    head_v = _int(meta, f"{arch}.attention.value_length") or n_embd // max(n_head, 1)
    return n_layer * n_head_kv * (head_k + head_v) * _KV_BYTES_PER_VALUE


def cap_num_ctx(info: GGUFInfo, num_ctx: int) -> int:
    """num_ctx capped at the model's trained context (``<arch>.context_length``), as Ollama caps it."""
    # Past its trained context a model has never seen the positions, and the KV cache for them is memory
    # spent on nothing: Ollama (llm/server.go) lowers num_ctx to it before sizing the runner, and so do we.
    trained = info.context_length()
    return min(num_ctx, trained) if trained is not None and trained > 0 else num_ctx


def estimate(info: GGUFInfo, model_path: Path, *, n_ctx: int, n_parallel: int) -> Estimate:
    """What loading this model with `n_ctx` × `n_parallel` cells takes."""
    weights = int(model_path.stat().st_size * _WEIGHTS_FACTOR)
    # The header reader elides long arrays, so a large vocabulary's size is unknown: assume a large one.
    n_vocab = len(info.metadata.get("tokenizer.ggml.tokens") or ()) or _LARGE_VOCAB
    # One row of float logits per sequence, plus llama.cpp's compute graph buffers.
    buffers = n_vocab * 4 * max(n_parallel, 1) + _FIXED_OVERHEAD
    return Estimate(weights, kv_bytes_per_token(info) * n_ctx * n_parallel, buffers)


def available_ram() -> int:
    """MemAvailable from /proc/meminfo (what the kernel can give without swapping)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemAvailable is missing from /proc/meminfo")


def gpu_memory(device_index: int, which: Literal["free", "total"]) -> int | None:
    """A GPU's free or total memory from NVML, or None when NVML is not there (no driver, no pynvml)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            return int(getattr(pynvml.nvmlDeviceGetMemoryInfo(handle), which))
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        log.warning("NVML could not report the %s memory of GPU %d: %s", which, device_index, exc)
        return None


def format_gib(n: int) -> str:
    """Bytes as Ollama words memory errors: "1.2 GiB"."""
    return f"{n / GIB:.1f} GiB"
