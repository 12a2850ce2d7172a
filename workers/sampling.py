"""Per-sequence sampling: Ollama's options turned into a sampler, vectorised where it can be.

The common cases run in numpy on the logits llama.cpp wrote, without building llama.cpp's candidate array
of the whole vocabulary (262k entries for Gemma) for every token: greedy is one argmax; top-k first
selects the k best (argpartition) and only then takes a softmax, over k values, for top_p, min_p,
temperature and the draw. Penalties are applied only when not neutral (Ollama's default repeat_penalty
is 1.0). A grammar, active penalties, typical_p or top_k 0 use llama.cpp's native sampler chain.

A sampled token's log probability, with the likeliest alternatives (`logprobs`), is read from the same
logits (logprob_entry).
"""

from __future__ import annotations

import ctypes
import math
import random
from dataclasses import dataclass
from typing import Any

import llama_cpp as llama
import numpy as np

from workers.llama import LlamaModel


class GrammarError(ValueError):
    """llama.cpp could not compile the grammar built for `format`."""


@dataclass(frozen=True)
class SamplingParams:
    """The sampling options of one request, with Ollama's defaults (api/types.go, DefaultOptions)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    grammar: str | None = None


class SequenceSampler:
    """One sequence's sampling: its chain, and for `format` a grammar checked the cheap way.

    Applying a grammar to all of a large vocabulary (262k tokens for Gemma) costs more than the decode
    itself on a CPU. As llama.cpp's own common sampler does, sample without the grammar first and ask
    the grammar about that one token; only when it refuses, sample again with the grammar applied.
    """

    def __init__(self, model: LlamaModel, params: SamplingParams, n_ctx: int):
        self._n_vocab = model.n_vocab
        self._params = params
        self._vector = _vectorisable(params, n_ctx)
        seed = params.seed if params.seed >= 0 else random.SystemRandom().randrange(1 << 32)
        self._rng = np.random.default_rng(seed & 0xFFFFFFFF)
        self.free = _build_chain(model, params, n_ctx, grammar=None, seed=seed)
        self.constrained: llama.llama_sampler_p | None = None
        if params.grammar is not None:
            try:
                self.constrained = _build_chain(model, params, n_ctx, grammar=params.grammar, seed=seed)
            except GrammarError:
                llama.llama_sampler_free(self.free)
                raise
            # The grammar is the first sampler of the constrained chain (see _build_chain).
            self._grammar = llama.llama_sampler_chain_get(self.constrained, 0)
            self._one = (llama.llama_token_data * 1)()
            self._one_array = llama.llama_token_data_array(self._one, 1, -1, False)

    def sample(self, ctx: llama.llama_context_p, index: int) -> int:
        """The next token from the logits at batch index `index`."""
        if self._vector and self.constrained is None:
            pointer = llama.llama_get_logits_ith(ctx, index)
            return self.pick(np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)))
        token = int(llama.llama_sampler_sample(self.free, ctx, index))
        if self.constrained is None:
            return token
        self._one[0].id = token  # type: ignore[assignment]  # ctypes converts the int
        self._one[0].logit = 1.0
        self._one[0].p = 0.0
        self._one_array.size = 1
        self._one_array.selected = -1
        llama.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        if not math.isinf(self._one[0].logit):
            llama.llama_sampler_accept(self.constrained, token)
            return token
        # Refused: sample again among the tokens the grammar allows (this also accepts the token).
        return int(llama.llama_sampler_sample(self.constrained, ctx, index))

    def pick(self, logits: np.ndarray) -> int:
        """The vectorised chain on one row of logits: greedy, or top_k → top_p → min_p → temperature → draw.

        The same stages in the same order as the native chain (_build_chain), as llama.cpp defines them.
        """
        p = self._params
        if p.temperature <= 0:
            return int(np.argmax(logits))  # the first of equal maxima, as llama.cpp's greedy sampler
        k = min(p.top_k, logits.shape[0])
        best = np.argpartition(logits, -k)[-k:]
        values = logits[best].astype(np.float64)
        order = np.argsort(-values, kind="stable")
        best, values = best[order], values[order]
        if p.top_p < 1.0:
            probs = _softmax(values)
            # Keep the likeliest tokens until their mass reaches top_p (at least one).
            cut = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            best, values = best[:cut], values[:cut]
        if p.min_p > 0.0:
            # p >= min_p × p_max, in logit space; the first (the max) always stays.
            keep = values >= values[0] + math.log(p.min_p)
            best, values = best[keep], values[keep]
        probs = _softmax(values / p.temperature)
        drawn = int(np.searchsorted(np.cumsum(probs), self._rng.random() * probs.sum(), side="right"))
        return int(best[min(drawn, len(best) - 1)])

    def free_all(self) -> None:
        """Free the native samplers."""
        llama.llama_sampler_free(self.free)
        if self.constrained is not None:
            llama.llama_sampler_free(self.constrained)


def _penalties_active(params: SamplingParams, n_ctx: int) -> bool:
    last_n = n_ctx if params.repeat_last_n == -1 else params.repeat_last_n
    return last_n > 0 and (
        params.repeat_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    )


def _vectorisable(params: SamplingParams, n_ctx: int) -> bool:
    """Whether SequenceSampler.pick implements this chain: greedy, or top_k > 0 without typical_p."""
    if _penalties_active(params, n_ctx):
        return False
    return params.temperature <= 0 or (params.top_k > 0 and params.typical_p >= 1.0)


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    result: np.ndarray = shifted / shifted.sum()
    return result


def _build_chain(
    model: LlamaModel, params: SamplingParams, n_ctx: int, grammar: str | None, seed: int
) -> llama.llama_sampler_p:
    """A native sampler chain; with a grammar, the grammar comes first."""
    chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())

    def add(sampler: llama.llama_sampler_p | None, what: str) -> None:
        if not sampler:
            llama.llama_sampler_free(chain)
            raise GrammarError(f"could not build the {what} sampler")
        llama.llama_sampler_chain_add(chain, sampler)

    # The grammar goes first so that every later stage only sees tokens that keep the output valid.
    if grammar is not None:
        add(llama.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root"), "grammar")
    last_n = n_ctx if params.repeat_last_n == -1 else params.repeat_last_n
    if _penalties_active(params, n_ctx):
        add(
            llama.llama_sampler_init_penalties(
                model.n_vocab,
                last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
            "penalties",
        )
    if params.temperature <= 0:
        add(llama.llama_sampler_init_greedy(), "greedy")
        return chain
    if params.top_k > 0:
        add(llama.llama_sampler_init_top_k(params.top_k), "top_k")
    if params.typical_p < 1.0:
        add(llama.llama_sampler_init_typical(params.typical_p, 1), "typical_p")
    if params.top_p < 1.0:
        add(llama.llama_sampler_init_top_p(params.top_p, 1), "top_p")
    if params.min_p > 0.0:
        add(llama.llama_sampler_init_min_p(params.min_p, 1), "min_p")
    add(llama.llama_sampler_init_temp(params.temperature), "temperature")
    # Ollama's seed -1 means "random" (drawn by the caller); llama.cpp's own constant is opaque.
    add(llama.llama_sampler_init_dist(seed & 0xFFFFFFFF), "dist")
    return chain


def logprob_entry(
    ctx: llama.llama_context_p, model: LlamaModel, index: int, token: int, top: int
) -> dict[str, Any]:
    """The token's log probability under the model (before sampling options), and the top alternatives."""
    logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, index), shape=(model.n_vocab,))
    peak = float(logits.max())
    logprobs = logits - (peak + float(np.log(np.exp(logits - peak).sum())))

    def entry(tok: int) -> dict[str, Any]:
        piece = model.piece(tok)
        return {
            "token": piece.decode("utf-8", errors="replace"),
            "logprob": float(logprobs[tok]),
            "bytes": list(piece),
        }

    out = entry(token)
    if top > 0:
        best = np.argpartition(logprobs, -top)[-top:]
        best = best[np.argsort(logprobs[best])[::-1]]
        out["top_logprobs"] = [entry(int(t)) for t in best]
    return out
