"""The batching engine: many sequences of one model decoded together in one llama.cpp context.

One context holds `n_parallel` sequences of `n_ctx` cells each (Ollama's num_ctx × NUM_PARALLEL). A step
is either one prompt chunk of the oldest sequence still being prefilled, or the next token of every
generating sequence (in batches of at most `max_decode_rows`); the two alternate, so a long prompt stalls
the running streams by one chunk at most. Each sequence is sampled with its own sampler chain. A new
sequence joins between steps; a finished or cancelled one frees its slot and its KV cells at once.
Single-sequence decoding is simply a batch of one.

The engine does no I/O: step() returns events and the caller (the worker's decode loop) publishes them.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import llama_cpp as llama
import numpy as np

from workers.llama import LlamaModel
from workers.sampling import SamplingParams, SequenceSampler
from workers.vision import ImageError, MediaPrompt

log = logging.getLogger(__name__)

DoneReason = Literal["stop", "length", "cancel", "error"]

# The most generating sequences decoded in one batch when outputs must not depend on the batch
# (HERD_BATCH_INVARIANT, the default). llama.cpp's CPU matrix kernels take another path, with another
# summation order, from 8 rows on (from 4 with repacked weights, which the cache then turns off), and that
# can flip a greedy near-tie. Kept below it, and with every prompt prefilled on its own, a sequence's
# numbers are the same alone or beside any others. Measured on Gemma 3 270M (x86-64, AVX2), 8 prompts ×
# 64 greedy tokens: identical alone and in every group of 2 to 8; with one batch of 8 and prompt chunks
# mixed in, 4 or 5 of the 8 diverged.
MAX_DECODE_ROWS = 7

# With context shifting a generation need never fill the context, so one that sets no num_predict (or a
# larger one) is bounded at this many context windows, as Ollama bounds it (llm/llama_server.go).
OPEN_ENDED_CONTEXTS = 10


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
    prompt_tokens: int
    prompt_ns: int
    eval_tokens: int
    eval_ns: int
    tokens: list[int]  # prompt + generated: Ollama's `context` on /api/generate
    error: str | None = None


Event = TokenEvent | DoneEvent


@dataclass
class _Sequence:
    request: SequenceRequest
    seq_id: int
    sampler: SequenceSampler
    submitted_ns: int
    prefilled: int = 0  # prompt tokens already in the KV cache
    n_past: int = 0  # cells of the KV cache in use (lower than prompt + generated after a shift)
    keep: int = 0  # tokens at the start that a context shift keeps
    generated: list[int] = field(default_factory=list)
    pending_token: int | None = None  # sampled, not yet decoded
    first_token_ns: int = 0
    held: str = ""  # text held back because it may be the start of a stop string
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # entries not yet sent with a text
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )


class BatchEngine:
    """Continuous batching over one llama.cpp context for one loaded model."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int,
        n_parallel: int = 1,
        n_batch: int = 512,
        n_threads: int = 0,
        max_decode_rows: int = MAX_DECODE_ROWS,
    ):
        self.model = model
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.n_batch = n_batch
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx * n_parallel
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = n_parallel
        # One KV stream per sequence: each slot gets exactly n_ctx cells, as Ollama documents.
        params.kv_unified = False
        if n_threads > 0:
            params.n_threads = n_threads
            params.n_threads_batch = n_threads
        params.no_perf = True
        ctx = llama.llama_init_from_model(model.handle, params)
        if not ctx:
            raise ContextError(
                f"could not create a context of {n_ctx} tokens × {n_parallel} sequences for {model.path.name}"
            )
        self.ctx = ctx
        self._memory = llama.llama_get_memory(ctx)
        # Recurrent and some sliding-window memories cannot move cells: those never shift.
        self.can_shift = bool(llama.llama_memory_can_shift(self._memory))
        self._batch = llama.llama_batch_init(n_batch, 0, n_parallel)
        self._free_ids: deque[int] = deque(range(n_parallel))
        self._running: list[_Sequence] = []
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()  # submit/cancel come from other threads than step()
        self._prefill_turn = False
        self.max_decode_rows = max_decode_rows

    # --- slots -------------------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free_ids)

    def submit(self, request: SequenceRequest) -> None:
        """Add a sequence; it joins the batch at the next step. Raises NoFreeSlot when full."""
        if len(request.prompt) == 0:
            raise ValueError("a sequence needs at least one prompt token")
        if len(request.prompt) >= self.n_ctx:
            raise ValueError(f"prompt of {len(request.prompt)} tokens does not fit num_ctx {self.n_ctx}")
        # llama_decode refuses an id outside the vocabulary only once the sequence runs: refuse it first.
        self.model.check_tokens(request.prompt, "prompt")
        sampler = SequenceSampler(self.model, request.sampling, self.n_ctx)
        with self._lock:
            if not self._free_ids:
                sampler.free_all()
                raise NoFreeSlot(f"all {self.n_parallel} sequence slots of {self.model.path.name} are busy")
            seq_id = self._free_ids.popleft()
            seq = _Sequence(request, seq_id, sampler, time.perf_counter_ns())
            seq.keep = self.shift_keep(request)
            self._running.append(seq)

    def shift_keep(self, request: SequenceRequest) -> int:
        """How many leading tokens a shift keeps: num_keep (-1: the prompt), plus the BOS Ollama adds."""
        keep = len(request.prompt) if request.num_keep < 0 else request.num_keep
        if self.model.add_bos:
            keep += 1
        # At least one token must be left to discard.
        return min(keep, self.n_ctx - 1)

    def token_limit(self, request: SequenceRequest) -> int | None:
        """The most tokens a sequence generates: num_predict, bounded when shifting never fills the context."""
        if not request.shift or not self.can_shift:
            return request.max_tokens
        bound = OPEN_ENDED_CONTEXTS * self.n_ctx
        return bound if request.max_tokens is None else min(request.max_tokens, bound)

    def cancel(self, key: str) -> None:
        """Stop a sequence at the next step (its client went away)."""
        with self._lock:
            self._cancelled.add(key)

    # --- decoding ----------------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """Decode one batch over every running sequence; returns the tokens and completions it produced."""
        events: list[Event] = []
        with self._lock:
            running = list(self._running)
            cancelled, self._cancelled = self._cancelled, set()
        for seq in running:
            if seq.request.key in cancelled:
                events.append(self._finish(seq, "cancel"))
        running = [s for s in running if s.request.key not in cancelled]
        if not running:
            return events

        decoding = [s for s in running if s.pending_token is not None]
        prefilling = [s for s in running if s.pending_token is None]
        # A step is either one prompt chunk of the oldest waiting sequence, or the next token of every
        # generating one; they alternate, so a long prompt stalls the others by one chunk at most.
        if prefilling and (self._prefill_turn or not decoding):
            self._prefill_turn = False
            return events + self._prefill(prefilling[0])
        self._prefill_turn = True
        for group in decode_groups(decoding, self.max_decode_rows):
            events.extend(self._decode(group))
        return events

    def _prefill(self, seq: _Sequence) -> list[Event]:
        """Decode the next chunk of one sequence's prompt, alone: its numbers never depend on others."""
        prompt = seq.request.prompt
        take = min(len(prompt) - seq.prefilled, self.n_batch)
        # --- vision hook: an image at this position is evaluated by mtmd; text stops at the next one ---
        media = seq.request.media
        if media is not None:
            try:
                evaluated = media.prefill_image(self.ctx, seq.seq_id, seq.prefilled, self.n_batch)
            except ImageError as exc:
                return [self._finish(seq, "error", str(exc))]
            if evaluated:
                seq.prefilled += evaluated
                seq.n_past = seq.prefilled
                return []
            take = min(take, media.text_end(seq.prefilled) - seq.prefilled)
        # --- end of the vision hook ---
        sample_at: list[tuple[_Sequence, int]] = []
        for i in range(take):
            pos = seq.prefilled + i
            last = pos == len(prompt) - 1
            self._put(i, prompt[pos], pos, seq.seq_id, last)
            if last:
                sample_at.append((seq, i))
        seq.prefilled += take
        seq.n_past = seq.prefilled
        return self._run_batch(take, [seq], sample_at)

    def _decode(self, group: list[_Sequence]) -> list[Event]:
        """Decode the pending token of each sequence in the group, in one batch."""
        sample_at = []
        for i, seq in enumerate(group):
            assert seq.pending_token is not None
            self._put(i, seq.pending_token, seq.n_past, seq.seq_id, True)
            sample_at.append((seq, i))
        return self._run_batch(len(group), group, sample_at)

    def _run_batch(
        self, n: int, seqs: list[_Sequence], sample_at: list[tuple[_Sequence, int]]
    ) -> list[Event]:
        self._batch.n_tokens = n
        rc = llama.llama_decode(self.ctx, self._batch)
        if rc != 0:
            # 1: no KV slot; <0: a hard failure. Either way these sequences cannot go on.
            message = f"llama_decode failed ({rc})"
            log.error(message)
            return [self._finish(s, "error", message) for s in seqs]
        events: list[Event] = []
        for seq, index in sample_at:
            if seq.pending_token is not None:
                seq.n_past += 1  # the decoded pending token is now in the cache
            token = seq.sampler.sample(self.ctx, index)
            if seq.request.logprobs is not None and not self.model.is_eog(token):
                seq.logprobs.append(self._logprob_entry(index, token, seq.request.logprobs))
            events.extend(self._accept(seq, token))
        return events

    def _put(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits

    def _logprob_entry(self, index: int, token: int, top: int) -> dict[str, Any]:
        """The token's log probability under the model (before sampling options), and the top alternatives."""
        logits = np.ctypeslib.as_array(
            llama.llama_get_logits_ith(self.ctx, index), shape=(self.model.n_vocab,)
        )
        peak = float(logits.max())
        logprobs = logits - (peak + float(np.log(np.exp(logits - peak).sum())))

        def entry(tok: int) -> dict[str, Any]:
            piece = self.model.piece(tok)
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

    def _text_event(self, seq: _Sequence, text: str) -> TokenEvent:
        """A text event carrying the log probabilities of the tokens it completes."""
        entries, seq.logprobs = seq.logprobs, []
        return TokenEvent(seq.request.key, text, entries if seq.request.logprobs is not None else None)

    def _accept(self, seq: _Sequence, token: int) -> list[Event]:
        now = time.perf_counter_ns()
        if not seq.generated and seq.first_token_ns == 0:
            seq.first_token_ns = now
        if self.model.is_eog(token):
            return [*self._flush(seq), self._finish(seq, "stop")]
        seq.generated.append(token)
        text = seq.held + seq.decoder.decode(self.model.piece(token))
        seq.held = ""
        events: list[Event] = []
        stop_at = _find_stop(text, seq.request.stop)
        if stop_at is not None:
            if stop_at > 0 or seq.logprobs:
                events.append(self._text_event(seq, text[:stop_at]))
            return [*events, self._finish(seq, "stop")]
        keep = stop_prefix_len(text, seq.request.stop)
        if keep:
            text, seq.held = text[:-keep], text[-keep:]
        if text:
            events.append(self._text_event(seq, text))
        limit = self.token_limit(seq.request)
        if limit is not None and len(seq.generated) >= limit:
            return events + self._flush(seq) + [self._finish(seq, "length")]
        if seq.n_past + 1 >= self.n_ctx and not (seq.request.shift and self._shift(seq)):
            return events + self._flush(seq) + [self._finish(seq, "length")]
        seq.pending_token = token
        return events

    def _shift(self, seq: _Sequence) -> bool:
        """Make room in a full context as Ollama does: keep the first `keep` cells, drop half of the
        context after them, and move the rest down. False when the memory cannot shift.

        Only the KV cells move; the sampler's penalty window holds the last tokens sampled, not positions,
        and goes on unchanged (as Ollama's does), and the output (prompt + generated) keeps every token.
        """
        if not self.can_shift:
            return False
        discard = min(max((self.n_ctx - seq.keep) // 2, 1), seq.n_past - seq.keep)
        if discard <= 0:
            return False
        start, end = seq.keep, seq.keep + discard
        if not llama.llama_memory_seq_rm(self._memory, seq.seq_id, start, end):
            return False
        llama.llama_memory_seq_add(self._memory, seq.seq_id, end, seq.n_past, -discard)
        log.debug(
            "context full, shifted",
            extra={"key": seq.request.key, "n_past": seq.n_past, "keep": seq.keep, "discard": discard},
        )
        seq.n_past -= discard
        return True

    def _flush(self, seq: _Sequence) -> list[Event]:
        """Release text held back for stop matching or an unfinished UTF-8 sequence."""
        text = seq.held + seq.decoder.decode(b"", final=True)
        seq.held = ""
        return [self._text_event(seq, text)] if text or seq.logprobs else []

    def _finish(self, seq: _Sequence, reason: DoneReason, error: str | None = None) -> DoneEvent:
        now = time.perf_counter_ns()
        first = seq.first_token_ns or now
        llama.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
        seq.sampler.free_all()
        with self._lock:
            self._running.remove(seq)
            self._free_ids.append(seq.seq_id)
        return DoneEvent(
            key=seq.request.key,
            reason=reason,
            prompt_tokens=len(seq.request.prompt),
            prompt_ns=max(first - seq.submitted_ns, 0),
            eval_tokens=len(seq.generated),
            eval_ns=max(now - first, 0),
            tokens=[*seq.request.prompt, *seq.generated],
            error=error,
        )

    def close(self) -> None:
        """Free the context; every running sequence is dropped."""
        with self._lock:
            for seq in self._running:
                seq.sampler.free_all()
            self._running.clear()
        if self.ctx:
            llama.llama_batch_free(self._batch)
            llama.llama_free(self.ctx)
            self.ctx = None


def decode_groups(seqs: list[_Sequence], limit: int) -> list[list[_Sequence]]:
    """Split the generating sequences into as few batches of at most `limit` as possible, evenly."""
    if not seqs:
        return []
    count = -(-len(seqs) // limit)
    size = -(-len(seqs) // count)
    return [seqs[i : i + size] for i in range(0, len(seqs), size)]


def _find_stop(text: str, stops: list[str]) -> int | None:
    """Index of the earliest stop string in text, if any."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that could be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-n:]):
                best = n
                break
    return best
