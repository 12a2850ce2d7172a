"""Embeddings from a loaded model: a small embedding context sharing the model's weights."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import llama_cpp as llama

from workers.engine_io import ContextError
from workers.llama import LlamaModel


class InputTooLong(ValueError):
    """An input longer than the context while truncate is false."""


@dataclass
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int
    duration_ns: int


def _pooling_for(model: LlamaModel) -> int:
    # Embedding models declare their pooling; for generative models take the last token's state, as
    # Ollama does, since that is the one that has seen the whole input.
    arch = model.meta("general.architecture") or ""
    declared = model.meta(f"{arch}.pooling_type")
    if declared is not None and re.fullmatch(r"\d+", declared) and int(declared) > 0:
        return int(declared)
    return int(llama.LLAMA_POOLING_TYPE_LAST)


class Embedder:
    """Sequential embedding of inputs up to n_ctx tokens each."""

    def __init__(self, model: LlamaModel, *, n_ctx: int, n_threads: int = 0):
        self.model = model
        self.n_ctx = n_ctx
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx
        # Non-causal encoders need a whole input in one micro-batch.
        params.n_batch = n_ctx
        params.n_ubatch = n_ctx
        params.n_seq_max = 1
        params.embeddings = True
        params.pooling_type = _pooling_for(model)
        params.no_perf = True
        if n_threads > 0:
            params.n_threads = n_threads
            params.n_threads_batch = n_threads
        ctx = llama.llama_init_from_model(model.handle, params)
        if not ctx:
            raise ContextError(f"could not create an embedding context of {n_ctx} tokens")
        self.ctx = ctx
        self._memory = llama.llama_get_memory(ctx)
        self._batch = llama.llama_batch_init(n_ctx, 0, 1)

    def embed(
        self, inputs: list[str], *, truncate: bool, normalize: bool, dimensions: int | None
    ) -> EmbedResult:
        """One vector per input, L2-normalised when asked (/api/embed) and cut to `dimensions`."""
        started = time.perf_counter_ns()
        vectors: list[list[float]] = []
        total = 0
        for text in inputs:
            tokens = self.model.tokenize(text, add_special=True, parse_special=False)
            if len(tokens) > self.n_ctx:
                if not truncate:
                    raise InputTooLong(
                        f"input length exceeds maximum context length ({len(tokens)} > {self.n_ctx} tokens)"
                    )
                tokens = tokens[: self.n_ctx]
            total += len(tokens)
            vectors.append(self._embed_tokens(tokens))
        out = []
        for vec in vectors:
            if dimensions is not None and dimensions < len(vec):
                vec = vec[:dimensions]
            if normalize:
                norm = math.sqrt(sum(v * v for v in vec))
                vec = [v / norm for v in vec] if norm > 0 else vec
            out.append(vec)
        return EmbedResult(out, total, time.perf_counter_ns() - started)

    def _embed_tokens(self, tokens: list[int]) -> list[float]:
        llama.llama_memory_clear(self._memory, True)
        b = self._batch
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = True
        b.n_tokens = len(tokens)
        rc = llama.llama_encode(self.ctx, b) if self.model.has_encoder else llama.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama.cpp failed to embed the input ({rc})")
        ptr = llama.llama_get_embeddings_seq(self.ctx, 0)
        if not ptr:
            raise RuntimeError("llama.cpp returned no pooled embedding")
        return [float(ptr[i]) for i in range(self.model.n_embd)]

    def close(self) -> None:
        """Free the embedding context."""
        if self.ctx:
            llama.llama_batch_free(self._batch)
            llama.llama_free(self.ctx)
            self.ctx = None
