"""Tiny random-weight vision projector (mmproj) GGUFs for fast tests against real libmtmd.

The file is a LLaVA-style projector (`clip.projector_type = "mlp"`): a two-layer ViT over
8x8 patches of a 32x32 image, then a two-layer MLP into the text model's embedding space.
libmtmd loads it next to a tiny text model from `tests.support.tiny_gguf` and turns an
image into 16 embeddings that llama.cpp decodes into the KV cache like any prompt. The
weights are random, so different images give different embeddings (and so different
greedy continuations), and the same image always gives the same ones.

`write_tiny_qwen2vl_projector` writes a Qwen2-VL projector (`clip.projector_type =
"qwen2vl_merger"`) for a `qwen2vl` text model (`write_tiny_llama(architecture="qwen2vl")`):
its images take M-RoPE positions, a grid of (height, width) per embedding, so an image of
h x w embeddings advances the text position by max(h, w), not by h * w.
`write_tiny_qwen25vl_projector` writes a Qwen2.5-VL one (`"qwen2.5vl_merger"`) for the same
text model: Qwen2-VL's layout plus window attention, RMSNorm and a gated feed-forward.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import gguf
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "IMAGE_SIZE",
    "PATCH_SIZE",
    "QWEN2VL_PATCH_SIZE",
    "QWEN3VL_PATCH_SIZE",
    "QWEN25VL_PATCH_SIZE",
    "TOKENS_PER_IMAGE",
    "png",
    "write_tiny_projector",
    "write_tiny_qwen2vl_projector",
    "write_tiny_qwen3vl_projector",
    "write_tiny_qwen25vl_projector",
]

IMAGE_SIZE = 32
PATCH_SIZE = 8
# Every image is resized to IMAGE_SIZE square, so it always becomes this many embeddings.
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> NDArray[np.float32]:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def write_tiny_projector(
    path: Path,
    *,
    text_n_embd: int = 64,
    seed: int = 0,
    n_embd: int = 32,
    n_head: int = 2,
    n_ff: int = 64,
    n_layer: int = 2,
) -> Path:
    """Write a random-weight LLaVA-style projector GGUF whose output width is `text_n_embd`.

    `text_n_embd` must equal the text model's `n_embd` (libmtmd refuses a mismatch).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    hidden = 2 * text_n_embd

    # general.architecture = "clip" is what Ollama (and Herd's /api/create) look at to tell
    # a projector GGUF from a text model.
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_name("tiny-projector")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    writer.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    writer.add_uint32("clip.vision.embedding_length", n_embd)
    writer.add_uint32("clip.vision.feed_forward_length", n_ff)
    writer.add_uint32("clip.vision.block_count", n_layer)
    writer.add_uint32("clip.vision.projection_dim", text_n_embd)
    writer.add_uint32("clip.vision.attention.head_count", n_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    # Shapes are numpy's (outermost first); ggml reads them reversed. The patch embedding is
    # a stride-PATCH_SIZE convolution from 3 channels to n_embd.
    writer.add_tensor("v.patch_embd.weight", _normal(rng, (n_embd, 3, PATCH_SIZE, PATCH_SIZE), 0.2))
    writer.add_tensor("v.position_embd.weight", _normal(rng, (n_patches, n_embd), 0.1))
    std = 1.0 / np.sqrt(n_embd)
    for i in range(n_layer):
        blk = f"v.blk.{i}"
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"{blk}.{norm}.weight", np.ones(n_embd, dtype=np.float32))
            writer.add_tensor(f"{blk}.{norm}.bias", np.zeros(n_embd, dtype=np.float32))
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{blk}.{proj}.weight", _normal(rng, (n_embd, n_embd), std))
            writer.add_tensor(f"{blk}.{proj}.bias", np.zeros(n_embd, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_up.weight", _normal(rng, (n_ff, n_embd), std))
        writer.add_tensor(f"{blk}.ffn_up.bias", np.zeros(n_ff, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_down.weight", _normal(rng, (n_embd, n_ff), 1.0 / np.sqrt(n_ff)))
        writer.add_tensor(f"{blk}.ffn_down.bias", np.zeros(n_embd, dtype=np.float32))
    # The LLaVA MLP: mm.0 (linear), GELU, mm.2 (linear) into the text embedding space. Its
    # output scale matches the tiny text model's unit-scale token embeddings.
    writer.add_tensor("mm.0.weight", _normal(rng, (hidden, n_embd), 1.0 / np.sqrt(n_embd)))
    writer.add_tensor("mm.0.bias", np.zeros(hidden, dtype=np.float32))
    writer.add_tensor("mm.2.weight", _normal(rng, (text_n_embd, hidden), 2.0 / np.sqrt(hidden)))
    writer.add_tensor("mm.2.bias", np.zeros(text_n_embd, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Qwen2-VL merges 2x2 patches into one embedding, so an image becomes one embedding per 16x16 pixels
# of its size after libmtmd's resize (to multiples of 16, at least 8 embeddings' worth of pixels).
QWEN2VL_PATCH_SIZE = 8
# Qwen2.5-VL's window attention takes windows of 112x112 pixels (libmtmd's fixed default; this version
# reads no window size for it), so a patch of 28 makes a window 2x2 embeddings: a tiny image then spans
# several windows, and the windowed layers really attend within each. libmtmd's resize keeps the
# embedding grid of an image (4x3 for 40x30 pixels) whatever the patch size.
QWEN25VL_PATCH_SIZE = 28


def write_tiny_qwen2vl_projector(
    path: Path,
    *,
    text_n_embd: int = 64,
    seed: int = 0,
    n_embd: int = 32,
    n_head: int = 2,
    n_ff: int = 64,
    n_layer: int = 2,
) -> Path:
    """Write a random-weight Qwen2-VL projector GGUF whose output width is `text_n_embd`.

    The layout is what libmtmd's clip.cpp reads for PROJECTOR_TYPE_QWEN2VL: two temporal patch
    kernels and no patch bias or position embeddings (the ViT rotates by 2-D M-RoPE instead),
    LayerNorm blocks with biased attention, a post-LayerNorm, then the merger MLP (mm.0, GELU,
    mm.2) over each 2x2 group of patches.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = _qwen_vl_writer(
        path,
        "qwen2vl_merger",
        name="tiny-qwen2vl-projector",
        activation="clip.use_gelu",
        patch=QWEN2VL_PATCH_SIZE,
        text_n_embd=text_n_embd,
        n_embd=n_embd,
        n_head=n_head,
        n_ff=n_ff,
        n_layer=n_layer,
    )
    _add_patch_kernels(writer, rng, n_embd, QWEN2VL_PATCH_SIZE)
    std = 1.0 / np.sqrt(n_embd)
    for i in range(n_layer):
        blk = f"v.blk.{i}"
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"{blk}.{norm}.weight", np.ones(n_embd, dtype=np.float32))
            writer.add_tensor(f"{blk}.{norm}.bias", np.zeros(n_embd, dtype=np.float32))
        _add_attention(writer, rng, blk, n_embd)
        writer.add_tensor(f"{blk}.ffn_up.weight", _normal(rng, (n_ff, n_embd), std))
        writer.add_tensor(f"{blk}.ffn_up.bias", np.zeros(n_ff, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_down.weight", _normal(rng, (n_embd, n_ff), 1.0 / np.sqrt(n_ff)))
        writer.add_tensor(f"{blk}.ffn_down.bias", np.zeros(n_embd, dtype=np.float32))
    writer.add_tensor("v.post_ln.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("v.post_ln.bias", np.zeros(n_embd, dtype=np.float32))
    _add_merger(writer, rng, n_embd, text_n_embd)
    _finish(writer)
    return path


def write_tiny_qwen25vl_projector(
    path: Path,
    *,
    text_n_embd: int = 64,
    seed: int = 0,
    n_embd: int = 32,
    n_head: int = 2,
    n_ff: int = 64,
    n_layer: int = 2,
    n_wa_pattern: int = 2,
) -> Path:
    """Write a random-weight Qwen2.5-VL projector GGUF whose output width is `text_n_embd`.

    The layout is what libmtmd's clip.cpp reads for PROJECTOR_TYPE_QWEN25VL (what llama.cpp's converter
    writes for Qwen2_5_VLForConditionalGeneration): Qwen2-VL's temporal patch kernels and merger, but
    RMSNorm (weights only) and a gated SiLU feed-forward (ffn_gate, ffn_up, ffn_down, all biased) in
    the blocks, and window attention: every block but each `n_wa_pattern`-th attends only within its
    window of 2x2 embeddings, and libmtmd reorders the patches window by window around the blocks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = _qwen_vl_writer(
        path,
        "qwen2.5vl_merger",
        name="tiny-qwen25vl-projector",
        activation="clip.use_silu",
        patch=QWEN25VL_PATCH_SIZE,
        text_n_embd=text_n_embd,
        n_embd=n_embd,
        n_head=n_head,
        n_ff=n_ff,
        n_layer=n_layer,
    )
    # libmtmd refuses a qwen2.5vl_merger without it; the converter writes fullatt_block_indexes[0] + 1.
    writer.add_uint32("clip.vision.n_wa_pattern", n_wa_pattern)
    _add_patch_kernels(writer, rng, n_embd, QWEN25VL_PATCH_SIZE)
    std = 1.0 / np.sqrt(n_embd)
    for i in range(n_layer):
        blk = f"v.blk.{i}"
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"{blk}.{norm}.weight", np.ones(n_embd, dtype=np.float32))
        _add_attention(writer, rng, blk, n_embd)
        # n_ff differs from n_embd, or clip.cpp would take these for an old file's swapped up and down.
        for proj in ("ffn_gate", "ffn_up"):
            writer.add_tensor(f"{blk}.{proj}.weight", _normal(rng, (n_ff, n_embd), std))
            writer.add_tensor(f"{blk}.{proj}.bias", _normal(rng, (n_ff,), 0.1))
        writer.add_tensor(f"{blk}.ffn_down.weight", _normal(rng, (n_embd, n_ff), 1.0 / np.sqrt(n_ff)))
        writer.add_tensor(f"{blk}.ffn_down.bias", np.zeros(n_embd, dtype=np.float32))
    writer.add_tensor("v.post_ln.weight", np.ones(n_embd, dtype=np.float32))
    _add_merger(writer, rng, n_embd, text_n_embd)
    _finish(writer)
    return path


# Qwen3-VL's patches are 16 pixels, as in the real model: an embedding is 32x32 pixels.
QWEN3VL_PATCH_SIZE = 16


def write_tiny_qwen3vl_projector(
    path: Path,
    *,
    text_n_embd: int = 64,
    seed: int = 0,
    n_embd: int = 32,
    n_head: int = 2,
    n_ff: int = 64,
    n_layer: int = 2,
) -> Path:
    """Write a random-weight Qwen3-VL projector GGUF for a `qwen3vl` text model of width `text_n_embd`.

    The layout is what libmtmd's clip.cpp reads for PROJECTOR_TYPE_QWEN3VL: the temporal patch kernels
    with a patch bias, learned position embeddings (a 4x4 grid, interpolated to the image's), LayerNorm
    blocks with fused biased QKV and a GELU feed-forward, and block 0 a deepstack layer, whose merged
    features (norm, fc1, GELU, fc2) go out beside the merger's: each embedding is 2 * `text_n_embd` wide,
    what a text model with one deepstack layer takes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patch = QWEN3VL_PATCH_SIZE
    writer = _qwen_vl_writer(
        path,
        "qwen3vl_merger",
        name="tiny-qwen3vl-projector",
        activation="clip.use_gelu",
        patch=patch,
        text_n_embd=text_n_embd,
        n_embd=n_embd,
        n_head=n_head,
        n_ff=n_ff,
        n_layer=n_layer,
    )
    writer.add_array("clip.vision.is_deepstack_layers", [i == 0 for i in range(n_layer)])
    _add_patch_kernels(writer, rng, n_embd, patch)
    writer.add_tensor("v.patch_embd.bias", np.zeros(n_embd, dtype=np.float32))
    writer.add_tensor("v.position_embd.weight", _normal(rng, (16, n_embd), 0.1))
    std = 1.0 / np.sqrt(n_embd)
    merged = 4 * n_embd
    for i in range(n_layer):
        blk = f"v.blk.{i}"
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"{blk}.{norm}.weight", np.ones(n_embd, dtype=np.float32))
            writer.add_tensor(f"{blk}.{norm}.bias", np.zeros(n_embd, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_qkv.weight", _normal(rng, (3 * n_embd, n_embd), std))
        writer.add_tensor(f"{blk}.attn_qkv.bias", np.zeros(3 * n_embd, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_out.weight", _normal(rng, (n_embd, n_embd), std))
        writer.add_tensor(f"{blk}.attn_out.bias", np.zeros(n_embd, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_up.weight", _normal(rng, (n_ff, n_embd), std))
        writer.add_tensor(f"{blk}.ffn_up.bias", np.zeros(n_ff, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_down.weight", _normal(rng, (n_embd, n_ff), 1.0 / np.sqrt(n_ff)))
        writer.add_tensor(f"{blk}.ffn_down.bias", np.zeros(n_embd, dtype=np.float32))
    ds = "v.deepstack.0"
    writer.add_tensor(f"{ds}.norm.weight", np.ones(merged, dtype=np.float32))
    writer.add_tensor(f"{ds}.norm.bias", np.zeros(merged, dtype=np.float32))
    writer.add_tensor(f"{ds}.fc1.weight", _normal(rng, (merged, merged), 1.0 / np.sqrt(merged)))
    writer.add_tensor(f"{ds}.fc1.bias", np.zeros(merged, dtype=np.float32))
    writer.add_tensor(f"{ds}.fc2.weight", _normal(rng, (text_n_embd, merged), 2.0 / np.sqrt(merged)))
    writer.add_tensor(f"{ds}.fc2.bias", np.zeros(text_n_embd, dtype=np.float32))
    writer.add_tensor("v.post_ln.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("v.post_ln.bias", np.zeros(n_embd, dtype=np.float32))
    _add_merger(writer, rng, n_embd, text_n_embd)
    _finish(writer)
    return path


def _qwen_vl_writer(
    path: Path,
    projector_type: str,
    *,
    name: str,
    activation: str,
    patch: int,
    text_n_embd: int,
    n_embd: int,
    n_head: int,
    n_ff: int,
    n_layer: int,
) -> gguf.GGUFWriter:
    """A projector GGUF writer with the keys every Qwen-VL merger has; `activation` names the blocks'
    feed-forward activation key (clip.use_gelu or clip.use_silu)."""
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", projector_type)
    writer.add_bool(activation, True)
    # Qwen-VL sizes images dynamically; image_size only has to be there.
    writer.add_uint32("clip.vision.image_size", 8 * 2 * patch)
    writer.add_uint32("clip.vision.patch_size", patch)
    writer.add_uint32("clip.vision.embedding_length", n_embd)
    writer.add_uint32("clip.vision.feed_forward_length", n_ff)
    writer.add_uint32("clip.vision.block_count", n_layer)
    writer.add_uint32("clip.vision.projection_dim", text_n_embd)
    writer.add_uint32("clip.vision.attention.head_count", n_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    return writer


def _add_patch_kernels(writer: gguf.GGUFWriter, rng: np.random.Generator, n_embd: int, patch: int) -> None:
    # Two kernels, one per frame of Qwen-VL's temporal patch (a still image goes through both).
    std = 0.2 * QWEN2VL_PATCH_SIZE / patch  # the same activation scale whatever the patch's pixel count
    writer.add_tensor("v.patch_embd.weight", _normal(rng, (n_embd, 3, patch, patch), std))
    writer.add_tensor("v.patch_embd.weight.1", _normal(rng, (n_embd, 3, patch, patch), std))


def _add_attention(writer: gguf.GGUFWriter, rng: np.random.Generator, blk: str, n_embd: int) -> None:
    std = 1.0 / np.sqrt(n_embd)
    for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
        writer.add_tensor(f"{blk}.{proj}.weight", _normal(rng, (n_embd, n_embd), std))
        writer.add_tensor(f"{blk}.{proj}.bias", np.zeros(n_embd, dtype=np.float32))


def _add_merger(writer: gguf.GGUFWriter, rng: np.random.Generator, n_embd: int, text_n_embd: int) -> None:
    # The merger MLP (mm.0, GELU, mm.2) over each 2x2 group of patches, side by side.
    merged = 4 * n_embd
    writer.add_tensor("mm.0.weight", _normal(rng, (merged, merged), 1.0 / np.sqrt(merged)))
    writer.add_tensor("mm.0.bias", np.zeros(merged, dtype=np.float32))
    writer.add_tensor("mm.2.weight", _normal(rng, (text_n_embd, merged), 2.0 / np.sqrt(merged)))
    writer.add_tensor("mm.2.bias", np.zeros(text_n_embd, dtype=np.float32))


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def png(
    width: int, height: int, rgb: tuple[int, int, int], *, stripe: tuple[int, int, int] | None = None
) -> bytes:
    """A small RGB PNG of one colour (with an optional horizontal stripe across its middle), written
    by hand so that tests need no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = []
    for y in range(height):
        colour = stripe if stripe is not None and height // 3 <= y < 2 * height // 3 else rgb
        rows.append(b"\x00" + bytes(colour) * width)  # filter type 0 (None) per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
