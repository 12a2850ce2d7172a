"""Tiny random-weight GGUF models for fast tests against real llama.cpp.

The files written here load in milliseconds and generate text, so tests can
exercise the real llama-cpp-python code paths (loading, tokenizing, sampling,
chat templates, multi-model routing) without downloading a real model. The
weights are random, so the output is gibberish, but it is deterministic for a
given seed and differs between seeds, which is what tests need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import gguf
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BOS_ID",
    "CHATML_TEMPLATE",
    "EOS_ID",
    "IM_END_ID",
    "IM_START_ID",
    "TOOLS_TEMPLATE",
    "UNK_ID",
    "write_tiny_llama",
    "write_tiny_models",
]

# A plain ChatML template (the Qwen/OpenHermes style) for tests that need
# `tokenizer.chat_template` to be present and to render with Jinja.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A tool-aware ChatML template in the Llama 3.1 manner: tools are listed in a system turn and a call is a
# bare JSON object {"name": ..., "parameters": ...}; tool results come back as `tool` turns.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call these tools by answering with JSON "
    '{"name": ..., "parameters": ...}:\n'
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}"
    '{"name": "{{ call.function.name }}", "parameters": {{ call.function.arguments | tojson }}}'
    "{% endfor %}{% else %}{{ message['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
# The ChatML markers are real control tokens so that a ChatML prompt tokenizes
# to them (with special parsing) as it would with a real model. Note that
# llama.cpp marks any token spelled `<|im_end|>` as end-of-generation on its own.
IM_START_ID = 3
IM_END_ID = 4
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
_SPECIAL_TYPES = (
    gguf.TokenType.UNKNOWN,
    gguf.TokenType.CONTROL,
    gguf.TokenType.CONTROL,
    gguf.TokenType.CONTROL,
    gguf.TokenType.CONTROL,
)
_FIRST_BYTE_ID = len(_SPECIAL_TOKENS)
# SentencePiece's word-boundary marker: llama.cpp's SPM tokenizer turns every
# space into it, and only a NORMAL token spelled "▁" detokenizes back to a space. Without it the marker
# falls back to its three UTF-8 byte tokens and detokenizes to a literal "▁".
_SPACE_PIECE = "\u2581"
# Printable ASCII (without the space, which is the marker above) as single-char
# pieces, so plain text tokenizes to one token per character and the model has
# visible text to emit instead of raw bytes.
_PRINTABLE = [chr(c) for c in range(0x21, 0x7F)]


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens: list[str] = list(_SPECIAL_TOKENS)
    types: list[int] = [int(t) for t in _SPECIAL_TYPES]
    # <0x00>..<0xFF> make the vocabulary byte-complete: anything not covered
    # by a piece falls back to these, and llama.cpp's SPM loader looks up
    # <0x0A> as its newline token, failing to load without it.
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(gguf.TokenType.BYTE)] * 256
    pieces = [_SPACE_PIECE, *_PRINTABLE]
    tokens += pieces
    types += [int(gguf.TokenType.NORMAL)] * len(pieces)
    # Scores only rank merges; with single-character pieces no merge ever
    # applies, so any values do. Zero for non-pieces, as SentencePiece writes.
    scores = [0.0] * (len(tokens) - len(pieces)) + [-float(i + 1) for i in range(len(pieces))]
    return tokens, scores, types


def _normal(
    rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype: type[np.floating]
) -> NDArray[np.floating]:
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(dtype)


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_ff: int = 128,
    context_length: int = 512,
    chat_template: str | None = None,
    name: str = "tiny",
    embedding_only: bool = False,
    architecture: Literal["llama", "qwen2vl", "qwen3vl"] = "llama",
) -> Path:
    """Write a random-weight GGUF (llama architecture unless told) to `path` and return it.

    The same arguments always give a byte-identical file; a different `seed`
    gives different weights and therefore different generations.

    With `embedding_only`, the model declares mean pooling (so llama.cpp's
    embedding mode returns one vector per input) and ties the output layer to
    the token embeddings instead of storing a separate one.

    With `architecture="qwen2vl"` it is a Qwen2-VL text model instead: the same blocks plus Qwen2's
    q/k/v biases, and M-RoPE (`rope.dimension_sections`), so that images from a qwen2vl projector
    (tests/support/tiny_projector.py) take their 2-D positions as in the real model.

    With `architecture="qwen3vl"` it is a Qwen3-VL text model: Qwen3's q/k norms instead of the biases,
    interleaved M-RoPE, and one deepstack layer, so that it takes image embeddings twice its width (the
    second half is added to the first block's output, as Qwen3-VL's deepstack features are).
    """
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    if (n_embd // n_head) % 2:
        raise ValueError("head size must be even for RoPE")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    # Matrices in F16 halve the file (F32 would be ~0.5 MB at the defaults);
    # the 1-D norm weights stay F32 as llama.cpp's converters write them.
    f16 = np.float16

    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    if architecture in ("qwen2vl", "qwen3vl"):
        # Temporal, height and width sections of each head's rotary pairs (head_dim / 2 of them), in
        # Qwen2-VL's proportions (16, 24, 24 of 64); text tokens take the same position in all three.
        pairs = head_dim // 2
        height = width = 3 * pairs // 8
        writer.add_rope_dimension_sections([pairs - height - width, height, width, 0])
    if architecture == "qwen3vl":
        writer.add_num_deepstack_layers(1)
    writer.add_vocab_size(n_vocab)
    if embedding_only:
        writer.add_pooling_type(gguf.PoolingType.MEAN)

    add_llama_tokenizer(writer, tokens, scores, types)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    # Unit-scale embeddings and 1/sqrt(fan_in) projections keep activations
    # O(1) through the residual stream, so logits are well separated and
    # greedy decoding is stable rather than decided by rounding noise.
    writer.add_tensor("token_embd.weight", _normal(rng, (n_vocab, n_embd), 1.0, f16))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    if not embedding_only:
        output = _normal(rng, (n_vocab, n_embd), 2.0 / np.sqrt(n_embd), np.float32)
        # Zero the output rows of everything but the printable pieces: their
        # logits are then exactly 0 while about half the pieces score above 0,
        # so greedy decoding (and top-k sampling) never picks EOS, <|im_end|>
        # or raw bytes, and completions run to max_tokens with ASCII text.
        output[: _FIRST_BYTE_ID + 256] = 0.0
        writer.add_tensor("output.weight", output.astype(f16))
    attn_std = 1.0 / np.sqrt(n_embd)
    ff_std = 1.0 / np.sqrt(n_ff)
    for i in range(n_layer):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_q.weight", _normal(rng, (n_embd, n_embd), attn_std, f16))
        writer.add_tensor(f"{blk}.attn_k.weight", _normal(rng, (n_embd, n_embd), attn_std, f16))
        writer.add_tensor(f"{blk}.attn_v.weight", _normal(rng, (n_embd, n_embd), attn_std, f16))
        writer.add_tensor(f"{blk}.attn_output.weight", _normal(rng, (n_embd, n_embd), attn_std, f16))
        if architecture == "qwen2vl":
            for proj in ("attn_q", "attn_k", "attn_v"):
                writer.add_tensor(f"{blk}.{proj}.bias", _normal(rng, (n_embd,), 0.1, np.float32))
        if architecture == "qwen3vl":
            writer.add_tensor(f"{blk}.attn_q_norm.weight", np.ones(head_dim, dtype=np.float32))
            writer.add_tensor(f"{blk}.attn_k_norm.weight", np.ones(head_dim, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_gate.weight", _normal(rng, (n_ff, n_embd), attn_std, f16))
        writer.add_tensor(f"{blk}.ffn_up.weight", _normal(rng, (n_ff, n_embd), attn_std, f16))
        writer.add_tensor(f"{blk}.ffn_down.weight", _normal(rng, (n_embd, n_ff), ff_std, f16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_llama_tokenizer(
    writer: gguf.GGUFWriter, tokens: list[str], scores: list[float], types: list[int]
) -> None:
    """The tokenizer metadata every tiny GGUF here carries: a SentencePiece ("llama") vocabulary, BOS added."""
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    # No SentencePiece dummy prefix: with it llama.cpp prepends "▁" to the text
    # and to every fragment after a special token (so ChatML's "<|im_start|>user"
    # would become "<|im_start|> user"), and detokenizing without BOS would
    # yield a leading space. Without it text round-trips exactly, BOS or not.
    writer.add_add_space_prefix(False)


def write_tiny_models(directory: Path, count: int) -> list[Path]:
    """Write `count` distinct tiny models, tiny-0.gguf .. tiny-{count-1}.gguf, seeded 0..count-1."""
    directory = Path(directory)
    return [write_tiny_llama(directory / f"tiny-{i}.gguf", seed=i, name=f"tiny-{i}") for i in range(count)]
