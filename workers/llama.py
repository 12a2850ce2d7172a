"""A loaded GGUF model on llama.cpp's low-level API: weights, vocabulary, tokenizer and metadata.

One LlamaModel holds one copy of the weights; generation contexts (workers/engine.py) and embedding
contexts (workers/embedder.py) are created on top of it and share them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from pathlib import Path

import llama_cpp as llama

from workers.load_guard import LoadCrashedBefore, LoadGuard
from workers.repack_probe import repack_verdict

log = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False


@llama.llama_log_callback
def _llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp writes a lot at load time; keep it at debug so OLLAMA_DEBUG shows it and nothing else does.
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        log.debug("llama.cpp: %s", message)


def init_backend() -> None:
    """Initialise llama.cpp once per process and route its log into Python logging."""
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        llama.llama_log_set(_llama_log, ctypes.c_void_p(0))
        llama.llama_backend_init()
        _backend_ready = True


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (a CUDA, Metal... build)."""
    return bool(llama.llama_supports_gpu_offload())


class ModelLoadError(RuntimeError):
    """llama.cpp refused the file (not a GGUF, unsupported architecture, out of memory), or loading it
    crashed a worker recently (workers/load_guard.py)."""


class TokenOutOfRange(ValueError):
    """A token id the model's vocabulary does not have (llama_decode fails on one)."""


class LlamaModel:
    """The weights and vocabulary of one GGUF file, loaded once and shared by its contexts."""

    def __init__(self, path: Path, *, n_gpu_layers: int = 0, repack: bool = False):
        """``repack=True`` asks for llama.cpp's repacked CPU weights; they are used only where a probe
        in a child process found them safe and faster for this file and CPU (workers/repack_probe.py).
        """
        init_backend()
        if repack:
            verdict = repack_verdict(path, n_gpu_layers)
            if not verdict.use:
                log.info("not repacking %s: %s", path.name, verdict.detail)
            repack = verdict.use
        params = llama.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = repack
        # Store blobs only: those are what workers load, and a test killed mid-load of some other
        # file must not make the next run refuse it.
        guard = LoadGuard(path.parent.parent / "load-guard") if path.parent.name == "blobs" else None
        try:
            with guard.loading(path) if guard else contextlib.nullcontext():
                handle = llama.llama_model_load_from_file(str(path).encode(), params)
        except LoadCrashedBefore as exc:
            raise ModelLoadError(str(exc)) from exc
        if not handle:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self.path = path
        self.repacked = repack
        self.handle = handle
        self.vocab = llama.llama_model_get_vocab(handle)
        self.n_vocab = int(llama.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(llama.llama_model_n_ctx_train(handle))
        self.n_embd = int(llama.llama_model_n_embd(handle))
        self.size = int(llama.llama_model_size(handle))
        self.bos = int(llama.llama_vocab_bos(self.vocab))
        self.add_bos = bool(llama.llama_vocab_get_add_bos(self.vocab))
        self.has_encoder = bool(llama.llama_model_has_encoder(handle))
        self._piece_buf = ctypes.create_string_buffer(256)
        # Read once: the worker's state (heartbeat thread) uses it without touching the C model.
        self.kv_bytes_per_token = self._kv_bytes_per_token()

    def meta(self, key: str) -> str | None:
        """One GGUF metadata value as text, or None."""
        buf = ctypes.create_string_buffer(4096)
        n = llama.llama_model_meta_val_str(self.handle, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama.llama_model_meta_val_str(self.handle, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _kv_bytes_per_token(self) -> int:
        """Bytes of K and V cache per token across all layers (f16 cache, llama.cpp's default)."""
        arch = self.meta("general.architecture") or ""
        n_layer = int(llama.llama_model_n_layer(self.handle))
        n_head = max(int(llama.llama_model_n_head(self.handle)), 1)
        n_head_kv = int(llama.llama_model_n_head_kv(self.handle))
        key_len = self.meta(f"{arch}.attention.key_length")
        value_len = self.meta(f"{arch}.attention.value_length")
        head_k = int(key_len) if key_len and key_len.isdigit() else self.n_embd // n_head
        head_v = int(value_len) if value_len and value_len.isdigit() else self.n_embd // n_head
        return n_layer * n_head_kv * (head_k + head_v) * 2

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text to tokens; special-token text (e.g. <start_of_turn>) becomes the special token."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            tokens = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(
                self.vocab, data, len(data), tokens, capacity, add_special, parse_special
            )
        out = list(tokens[:n])
        # Templates that spell out the BOS token, tokenized with add_special, would start with two.
        if len(out) >= 2 and out[0] == out[1] == self.bos and self.add_bos:
            out = out[1:]
        return out

    def check_tokens(self, tokens: list[int], what: str) -> None:
        """Raise TokenOutOfRange naming the first id outside the vocabulary, e.g. a client's `context`."""
        for token in tokens:
            if not 0 <= token < self.n_vocab:
                raise TokenOutOfRange(
                    f"{what}: token id {token} is out of range for this model's vocabulary "
                    f"(0..{self.n_vocab - 1})"
                )

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        n = llama.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        """Tokens back to text (for context returned to clients and tests)."""
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        """End of generation: EOS, EOT and the model's other end tokens."""
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        """Free the weights; the model must not be used afterwards."""
        if self.handle:
            llama.llama_model_free(self.handle)
            self.handle = None
