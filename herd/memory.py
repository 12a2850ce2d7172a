"""How much memory a model needs, and how much a worker has: the numbers eviction and placement use.

The estimate is read from the GGUF header alone (no llama_cpp), so the API's placement and the worker's
admission agree: weights (the file's size, plus what llama.cpp adds when it repacks them for the CPU),
the KV cache for num_ctx × num_parallel cells in f16 (window-sized for sliding-window layers, as the
engine creates them with llama.cpp's swa_full=false), and the output and compute buffers. It errs on the
large side: a model that is said to fit must fit.

The budget: HERD_MEMORY_LIMIT when set, else what the device has free now plus what this worker's own
models already take (they would be given back by eviction). On CPU "free" is MemAvailable; on a GPU it is
the free VRAM NVML reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
# Sliding-window layers, for architectures whose GGUF has `<arch>.attention.sliding_window` but no
# `sliding_window_pattern`: one layer in `n` attends to everything, the rest to the window
# (llama.cpp's load_swa_pattern calls, src/models/<arch>.cpp). An architecture not listed counts as dense.
_SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "gpt-oss": 2, "cohere2": 4, "exaone4": 4}
# The engine's micro-batch (n_ubatch): llama.cpp gives each sliding-window cache its window plus one.
_UBATCH = 512
_SWA_PAD = 256  # llama.cpp pads the sliding-window cache to this many cells
# What Ollama leaves on a GPU beside a vision projector's weights (llm/llama_server.go,
# mmprojOffloadHeadroom): libmtmd allocates the image encoder's compute buffers when it loads, sized for
# its largest image (486 MiB for a tiny qwen2.5-vl projector's attention mask alone, on the CPU).
PROJECTOR_GPU_HEADROOM = GIB


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


def _layer_kv_bytes_per_token(info: GGUFInfo) -> int:
    """K and V cache bytes per token of one layer (f16)."""
    meta, arch = info.metadata, info.architecture
    n_embd = _int(meta, f"{arch}.embedding_length") or 0
    n_head = _int(meta, f"{arch}.attention.head_count") or 1
    n_head_kv = _int(meta, f"{arch}.attention.head_count_kv") or n_head
    head_k = _int(meta, f"{arch}.attention.key_length") or n_embd // max(n_head, 1)
    head_v = _int(meta, f"{arch}.attention.value_length") or n_embd // max(n_head, 1)
    return n_head_kv * (head_k + head_v) * _KV_BYTES_PER_VALUE


def kv_bytes_per_token(info: GGUFInfo) -> int:
    """K and V cache bytes per token across all layers, as llama.cpp sizes a full-size f16 cache."""
    n_layer = _int(info.metadata, f"{info.architecture}.block_count") or 0
    return n_layer * _layer_kv_bytes_per_token(info)


def sliding_window(info: GGUFInfo) -> tuple[int, int]:
    """(window, how many layers use it); (0, 0) for a model without sliding-window layers."""
    meta, arch = info.metadata, info.architecture
    window = _int(meta, f"{arch}.attention.sliding_window") or 0
    n_layer = _int(meta, f"{arch}.block_count") or 0
    declared = meta.get(f"{arch}.attention.sliding_window_pattern")
    if window <= 0 or n_layer <= 0:
        return 0, 0
    if isinstance(declared, list) and len(declared) == n_layer:  # one flag per layer
        return window, sum(1 for flag in declared if flag)
    pattern = declared if isinstance(declared, int) and not isinstance(declared, bool) else None
    pattern = pattern or _SWA_PATTERN.get(arch)
    if pattern is None:
        return 0, 0
    return window, sum(1 for il in range(n_layer) if il % pattern < pattern - 1)


def kv_cache_bytes(info: GGUFInfo, *, n_ctx: int, n_parallel: int) -> int:
    """The KV cache of a context of `n_ctx` × `n_parallel` cells, with window-sized SWA layers.

    A sliding-window layer holds min(n_ctx, window + one micro-batch) cells per sequence, padded to 256
    (llama.cpp's llama_kv_cache_iswa); with one buffer for all sequences (the engine's default) it is
    smaller still, so this bounds both layouts.
    """
    n_layer = _int(info.metadata, f"{info.architecture}.block_count") or 0
    window, n_swa_layers = sliding_window(info)
    per_layer = _layer_kv_bytes_per_token(info)
    full = (n_layer - n_swa_layers) * per_layer * n_ctx * n_parallel
    if not n_swa_layers:
        return full
    swa_cells = min(n_ctx, window + _UBATCH)
    swa_cells = -(-swa_cells // _SWA_PAD) * _SWA_PAD
    return full + n_swa_layers * per_layer * swa_cells * n_parallel


def cap_num_ctx(info: GGUFInfo, num_ctx: int) -> int:
    """num_ctx capped at the model's trained context (``<arch>.context_length``), as Ollama caps it."""
    # Past its trained context a model has never seen the positions, and the KV cache for them is memory
    # spent on nothing: Ollama (llm/server.go) lowers num_ctx to it before sizing the runner, and so do we.
    trained = info.context_length()
    return min(num_ctx, trained) if trained is not None and trained > 0 else num_ctx


def estimate(
    info: GGUFInfo,
    model_path: Path,
    *,
    n_ctx: int,
    n_parallel: int,
    projectors: Sequence[Path] = (),
    on_gpu: bool = False,
) -> Estimate:
    """What loading this model with `n_ctx` × `n_parallel` cells takes, with its vision projector.

    Ollama's manifests carry one projector at most, and it loads the first; so does Herd.
    """
    weights = int(model_path.stat().st_size * _WEIGHTS_FACTOR)
    # The header reader elides long arrays, so a large vocabulary's size is unknown: assume a large one.
    n_vocab = len(info.metadata.get("tokenizer.ggml.tokens") or ()) or _LARGE_VOCAB
    # One row of float logits per sequence, plus llama.cpp's compute graph buffers.
    buffers = n_vocab * 4 * max(n_parallel, 1) + _FIXED_OVERHEAD
    if projectors:
        weights += projectors[0].stat().st_size
        buffers += PROJECTOR_GPU_HEADROOM if on_gpu else 0
    return Estimate(weights, kv_cache_bytes(info, n_ctx=n_ctx, n_parallel=n_parallel), buffers)


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
