"""What goes into the batching engine (workers/engine.py) and what comes out: requests, events, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from workers.sampling import SamplingParams
from workers.vision import MediaPrompt

DoneReason = Literal["stop", "length", "cancel", "error"]


class NoFreeSlot(RuntimeError):
    """Every sequence slot of the context is taken."""


class ContextError(RuntimeError):
    """llama.cpp could not create the context (usually not enough memory for num_ctx × parallel)."""


@dataclass
class SequenceRequest:
    """What one generation asks of the engine."""

    key: str  # the job id: events and cancellation refer to it
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int | None = None  # None: until a stop, an end token or the context is full
    stop: list[str] = field(default_factory=list)
    # None: no log probabilities; n >= 0: each token's, with the n likeliest alternatives.
    logprobs: int | None = None
    # When the context fills: True shifts it (keeping the first num_keep tokens, dropping half of the
    # rest), False ends the sequence with "length". Ollama's `shift` and `num_keep` (-1: the whole prompt).
    shift: bool = True
    num_keep: int = 4
    # A prompt with images (workers/vision.py): `prompt` holds placeholders where its images go.
    media: MediaPrompt | None = None


@dataclass
class TokenEvent:
    key: str
    text: str
    # One entry per token whose text is (or ends) in `text`, when the request asked for them.
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class DoneEvent:
    key: str
    reason: DoneReason
    prompt_tokens: int  # the whole prompt, cached or evaluated (Ollama's prompt_eval_count counts both)
    prompt_ns: int  # submit to first token: only the evaluated part of the prompt costs time
    eval_tokens: int
    eval_ns: int
    tokens: list[int]  # prompt + generated: Ollama's `context` on /api/generate
    error: str | None = None
    cached_tokens: int = 0  # prompt tokens whose KV cells came from the prefix cache, not evaluated


Event = TokenEvent | DoneEvent
