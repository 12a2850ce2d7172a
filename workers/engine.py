"""The batching engine: many sequences of one model decoded together in one llama.cpp context.

One context holds `n_parallel` sequences of up to `n_ctx` cells each (Ollama's num_ctx × NUM_PARALLEL).
The decode thread calls step(); each step is one `llama_decode`:

- **Default (throughput) mode.** The step carries the next token of every generating sequence (no row
  cap) and fills the rest of the batch (`n_batch` tokens) with prompt chunks, oldest prompt first: mixed
  batches, as llama-server builds them. A long prompt is prefilled over several steps while the running
  streams go on, each stalled by one chunk at most, and a new stream starts at the next step. The KV cache
  is unified (one buffer for all sequences), so llama.cpp computes any mix of sequences as one micro-batch.
  A new request reuses the KV cells of the longest prompt prefix an idle slot still holds, in its own
  slot or copied into another (workers/prefix_cache.py): turn N of a chat evaluates only its new tokens.
- **Batch-invariant mode** (HERD_BATCH_INVARIANT=true). A sequence's numbers never depend on the others:
  a step is either one prompt chunk of one sequence, alone, or the next token of the generating
  sequences in batches of at most MAX_DECODE_ROWS; the two kinds alternate. Each sequence has its own KV
  stream, and nothing is reused across requests, so greedy output is the same alone or beside any others.

A sequence counts its KV cells (what num_ctx bounds) apart from its next position: the two are equal
but after an image with M-RoPE (the Qwen-VL families), which fills a cell per embedding and takes fewer
positions (workers/vision.py). Text is decoded at positions, and the cache is trimmed by position.

Each sequence is sampled with its own sampler (workers/sampling.py). A sequence joins at the next step; a
finished or cancelled one frees its slot at once (its cells stay cached in the default mode).

Threads: submit(), cancel() and the counters take a short bookkeeping lock and never wait for a decode;
step() and close() own the llama.cpp context (only the decode thread steps). The engine does no I/O:
step() returns events and the caller (workers/decode_loop.py) publishes them.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as llama

from workers.engine_io import (
    ContextError,
    DoneEvent,
    DoneReason,
    Event,
    NoFreeSlot,
    SequenceRequest,
    TokenEvent,
)
from workers.llama import LlamaModel
from workers.prefix_cache import CachedImage, Claim, Slot, SlotTable
from workers.sampling import SequenceSampler, logprob_entry
from workers.stop_strings import find_stop, stop_prefix_len
from workers.vision import ImageError

log = logging.getLogger(__name__)

# The most generating sequences decoded in one batch in the batch-invariant mode. llama.cpp's CPU matrix
# kernels take another path, with another summation order, from 8 rows on (from 4 with repacked weights),
# and that can flip a greedy near-tie. Kept below it, and with every prompt prefilled on its own, a
# sequence's numbers are the same alone or beside any others. Measured on Gemma 3 270M (x86-64, AVX2),
# 8 prompts × 64 greedy tokens: identical alone and in every group of 2 to 8; with one batch of 8 and
# prompt chunks mixed in, 4 or 5 of the 8 diverged.
MAX_DECODE_ROWS = 7

# With context shifting a generation need never fill the context, so one that sets no num_predict (or a
# larger one) is bounded at this many context windows, as Ollama bounds it (llm/llama_server.go).
OPEN_ENDED_CONTEXTS = 10


@dataclass
class _Sequence:
    request: SequenceRequest
    slot: Slot
    sampler: SequenceSampler
    submitted_ns: int
    cached: int = 0  # prompt tokens the slot's cache can give (trimmed at admission)
    source: Slot | None = None  # another idle slot whose cells hold those tokens, copied at admission
    admitted: bool = False  # its slot's cache trimmed to `cached` by the decode thread
    inputs: list[int] = field(default_factory=list)  # what prefill evaluates: the prompt (or a re-shift)
    prefilled: int = 0  # inputs already in the KV cache
    n_past: int = 0  # cells of the KV cache in use (lower than prompt + generated after a shift)
    pos: int = 0  # the position the next input takes: n_past, or less after an image with M-RoPE
    cells: list[int] = field(default_factory=list)  # the token in each cell, in order: the cache key
    images: list[CachedImage] = field(default_factory=list)  # where cells and positions part (M-RoPE)
    keep: int = 0  # tokens at the start that a context shift keeps
    generated: list[int] = field(default_factory=list)
    pending_token: int | None = None  # sampled, not yet decoded
    first_token_ns: int = 0
    held: str = ""  # text held back because it may be the start of a stop string
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # entries not yet sent with a text
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    @property
    def seq_id(self) -> int:
        return self.slot.seq_id


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
        batch_invariant: bool = False,
    ):
        self.model = model
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.batch_invariant = batch_invariant
        # Every generating sequence must fit in one step beside a prompt chunk.
        self.n_batch = max(n_batch, n_parallel)
        self.max_decode_rows = MAX_DECODE_ROWS if batch_invariant else n_parallel
        self.reuse_prefix = not batch_invariant
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx * n_parallel
        params.n_batch = self.n_batch
        params.n_ubatch = min(self.n_batch, 512)
        params.n_seq_max = n_parallel
        # Unified: one KV buffer, so that any mix of sequences is one micro-batch (with a stream per
        # sequence llama.cpp splits a batch by runs of consecutive sequence ids, one graph each).
        # Per-sequence streams in the invariant mode: a sequence's attention never sees another's cells.
        params.kv_unified = not batch_invariant
        # Sliding-window layers keep only their window (plus one micro-batch) per sequence, not num_ctx.
        params.swa_full = False
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
        # Recurrent and window-sized sliding-window memories cannot move cells: those never shift.
        self.can_shift = bool(llama.llama_memory_can_shift(self._memory))
        self.n_swa = int(llama.llama_model_n_swa(model.handle))
        # A recurrent state stands for its whole sequence, so no prefix of it can be copied to another.
        self.can_fork = not (
            llama.llama_model_is_recurrent(model.handle) or llama.llama_model_is_hybrid(model.handle)
        )
        self._batch = llama.llama_batch_init(self.n_batch, 0, n_parallel)
        self._slots = SlotTable(n_parallel)
        self._running: list[_Sequence] = []
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()  # bookkeeping: submit/cancel come from other threads than step()
        self._context_lock = threading.Lock()  # the llama.cpp context: step() and close()
        self._prefill_turn = False

    # --- slots -------------------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def free_slots(self) -> int:
        with self._lock:
            return self._slots.free

    def submit(self, request: SequenceRequest) -> None:
        """Add a sequence; it joins the batch at the next step. Raises NoFreeSlot when full.

        Picks the slot (the longest cached prefix) now; the decode thread trims its cells at admission.
        """
        if len(request.prompt) == 0:
            raise ValueError("a sequence needs at least one prompt token")
        if len(request.prompt) >= self.n_ctx:
            raise ValueError(f"prompt of {len(request.prompt)} tokens does not fit num_ctx {self.n_ctx}")
        # llama_decode refuses an id outside the vocabulary only once the sequence runs: refuse it first.
        self.model.check_tokens(request.prompt, "prompt")
        sampler = SequenceSampler(self.model, request.sampling, self.n_ctx)
        with self._lock:
            try:
                claim: Claim = self._slots.take(request.prompt, reuse=self.reuse_prefix, fork=self.can_fork)
            except LookupError:
                sampler.free_all()
                raise NoFreeSlot(
                    f"all {self.n_parallel} sequence slots of {self.model.path.name} are busy"
                ) from None
            seq = _Sequence(
                request, claim.slot, sampler, time.perf_counter_ns(), cached=claim.kept, source=claim.source
            )
            seq.inputs = request.prompt
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
        if not request.shift:
            return request.max_tokens
        bound = OPEN_ENDED_CONTEXTS * self.n_ctx
        return bound if request.max_tokens is None else min(request.max_tokens, bound)

    def cancel(self, key: str) -> None:
        """Stop a sequence at the next step (its client went away)."""
        with self._lock:
            self._cancelled.add(key)

    # --- decoding ----------------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """One llama_decode over the running sequences; returns the tokens and completions it produced."""
        with self._context_lock:
            if not self.ctx:
                return []
            events: list[Event] = []
            with self._lock:
                running = list(self._running)
                cancelled, self._cancelled = self._cancelled, set()
            for seq in running:
                if seq.request.key in cancelled:
                    events.append(self._finish(seq, "cancel"))
            running = [s for s in running if s.request.key not in cancelled]
            for seq in running:
                if not seq.admitted:
                    self._admit(seq)
            if not running:
                return events
            decoding = [s for s in running if s.pending_token is not None]
            prefilling = self._evaluate_images([s for s in running if s.pending_token is None], events)
            if self.batch_invariant:
                return events + self._invariant_step(decoding, prefilling)
            return events + self._mixed_step(decoding, prefilling)

    def _admit(self, seq: _Sequence) -> None:
        """Trim the slot's cached cells to the prefix this prompt shares (or copy that prefix's cells from
        the slot that holds them); the rest is prefilled."""
        prompt = seq.request.prompt
        media = seq.request.media
        # The last prompt token is always evaluated: its logits give the first token.
        kept = min(seq.cached, len(prompt) - 1)
        if media is not None:
            kept = media.image_boundary(kept)  # an image's cells are reused whole or not at all
        holder = seq.source or seq.slot  # the slot whose cells hold the kept prefix
        # Where the first input not kept goes: the cells below that position are the kept ones.
        kept, pos, images = holder.keep(kept)
        if 0 < kept < len(holder.cached) and self.n_swa > 0:
            # A window-sized cache has dropped the cells before its window: the kept prefix is usable
            # only if the window before its end is still there (llama-server's check).
            pos_min = int(llama.llama_memory_seq_pos_min(self._memory, holder.seq_id))
            if pos_min > max(0, pos - self.n_swa):
                kept = pos = 0
        if holder is not seq.slot:
            # A fork: the slot's own cells go, the holder's prefix cells are shared with it (in a
            # unified cache a copy tags the cells with this sequence too; nothing is computed).
            llama.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
            if kept:
                llama.llama_memory_seq_cp(self._memory, holder.seq_id, seq.seq_id, 0, pos)
        elif not llama.llama_memory_seq_rm(self._memory, seq.seq_id, pos, -1):
            # Some memories (recurrent) cannot drop a tail: start the slot afresh.
            llama.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
            kept = pos = 0
        seq.cached = kept
        seq.prefilled = seq.n_past = kept
        seq.pos = pos
        seq.images = images if kept else []
        seq.cells = list(prompt[:kept])
        seq.admitted = True
        if kept:
            log.debug("prompt prefix reused", extra={"key": seq.request.key, "cached": kept})

    def _mixed_step(self, decoding: list[_Sequence], prefilling: list[_Sequence]) -> list[Event]:
        """Every generating sequence's next token, then prompt chunks (oldest first) up to n_batch."""
        sample_at: list[tuple[_Sequence, int]] = []
        rows = 0
        for seq in decoding:
            assert seq.pending_token is not None
            self._put(rows, seq.pending_token, seq.pos, seq.seq_id, True)
            sample_at.append((seq, rows))
            rows += 1
        in_batch = list(decoding)
        for seq in prefilling:
            if rows >= self.n_batch:
                break
            rows += self._prefill_into(seq, rows, self.n_batch - rows, sample_at)
            in_batch.append(seq)
        return self._run_batch(rows, in_batch, sample_at)

    def _invariant_step(self, decoding: list[_Sequence], prefilling: list[_Sequence]) -> list[Event]:
        """One prompt chunk alone, or every generating sequence in capped batches; the two alternate."""
        if prefilling and (self._prefill_turn or not decoding):
            self._prefill_turn = False
            seq = prefilling[0]
            sample_at: list[tuple[_Sequence, int]] = []
            rows = self._prefill_into(seq, 0, self.n_batch, sample_at)
            return self._run_batch(rows, [seq], sample_at)
        self._prefill_turn = True
        events: list[Event] = []
        for group in decode_groups(decoding, self.max_decode_rows):
            sample_at = []
            for i, seq in enumerate(group):
                assert seq.pending_token is not None
                self._put(i, seq.pending_token, seq.pos, seq.seq_id, True)
                sample_at.append((seq, i))
            events.extend(self._run_batch(len(group), group, sample_at))
        return events

    def _evaluate_images(self, prefilling: list[_Sequence], events: list[Event]) -> list[_Sequence]:
        """Evaluate each image that starts where a prompt's prefill stands; returns the sequences still
        prefilling (one whose image failed is finished with an error event in `events`).

        libmtmd decodes an image's embeddings itself, in batches of their own, so an image never shares a
        step's batch: it is evaluated just before it, and the text after it joins the batch as usual.
        """
        remaining: list[_Sequence] = []
        for seq in prefilling:
            media = seq.request.media
            if media is not None and seq.inputs is seq.request.prompt:
                try:
                    evaluated, pos = media.prefill_image(
                        self.ctx, seq.seq_id, seq.prefilled, seq.pos, self.n_batch
                    )
                except ImageError as exc:
                    events.append(self._finish(seq, "error", str(exc)))
                    continue
                if pos - seq.pos < evaluated:  # M-RoPE: the slot must know where cells and positions part
                    seq.images.append(CachedImage(len(seq.cells), evaluated, pos - seq.pos))
                seq.pos = pos
                # The placeholders stand in the cells' key, so a later prompt with the same image (same
                # digest, same placeholders) reuses these cells.
                seq.cells.extend(seq.inputs[seq.prefilled : seq.prefilled + evaluated])
                seq.prefilled += evaluated
                seq.n_past += evaluated
            remaining.append(seq)
        return remaining

    def _prefill_into(
        self, seq: _Sequence, start: int, budget: int, sample_at: list[tuple[_Sequence, int]]
    ) -> int:
        """Put the next chunk of `seq`'s inputs (at most `budget` tokens) into the batch from row `start`.

        The one place prompt input enters the KV cache: whatever else a prompt carries (an image's
        embeddings) is evaluated here, before the chunk that follows it. Returns the rows used.
        """
        inputs = seq.inputs
        take = min(len(inputs) - seq.prefilled, budget)
        media = seq.request.media
        if media is not None and inputs is seq.request.prompt:
            take = min(take, media.text_end(seq.prefilled) - seq.prefilled)  # the next image comes alone
        for i in range(take):
            at = seq.prefilled + i
            last = at == len(inputs) - 1
            self._put(start + i, inputs[at], seq.pos + i, seq.seq_id, last)
            if last:
                sample_at.append((seq, start + i))
        seq.cells.extend(inputs[seq.prefilled : seq.prefilled + take])
        seq.prefilled += take
        seq.n_past += take
        seq.pos += take
        return take

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
                seq.pos += 1
                seq.cells.append(seq.pending_token)
            token = seq.sampler.sample(self.ctx, index)
            if seq.request.logprobs is not None and not self.model.is_eog(token):
                seq.logprobs.append(logprob_entry(self.ctx, self.model, index, token, seq.request.logprobs))
            events.extend(self._accept(seq, token))
        return events

    def _put(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits

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
        stop_at = find_stop(text, seq.request.stop)
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
        if seq.n_past + 1 >= self.n_ctx and not (seq.request.shift and self._shift(seq, token)):
            return events + self._flush(seq) + [self._finish(seq, "length")]
        if seq.prefilled == len(seq.inputs):  # else re-evaluating after a shift, `token` last
            seq.pending_token = token
        return events

    def _shift(self, seq: _Sequence, token: int) -> bool:
        """Make room in a full context as Ollama does: keep the first `keep` cells, drop half of the
        context after them, and move the rest down. False when there is nothing to drop.

        A memory that cannot move cells (window-sized sliding-window caches, recurrent state) is cleared
        instead and the kept tokens, then `token`, are evaluated again as a prompt (Ollama's
        ErrReprocessInputs). The sampler's penalty window holds the last tokens sampled, not positions,
        and goes on unchanged (as Ollama's does), and the output (prompt + generated) keeps every token.
        """
        discard = min(max((self.n_ctx - seq.keep) // 2, 1), seq.n_past - seq.keep)
        if discard <= 0:
            return False
        start, end = seq.keep, seq.keep + discard
        remaining = seq.cells[:start] + seq.cells[end:]
        log.debug(
            "context full, shifted",
            extra={"key": seq.request.key, "n_past": seq.n_past, "keep": seq.keep, "discard": discard},
        )
        # Cells are moved by position: only where each cell has its own (no M-RoPE image, whose memory
        # cannot shift anyway) are the cells to drop the positions to drop.
        if (
            self.can_shift
            and seq.pos == seq.n_past
            and llama.llama_memory_seq_rm(self._memory, seq.seq_id, start, end)
        ):
            llama.llama_memory_seq_add(self._memory, seq.seq_id, end, seq.n_past, -discard)
            seq.n_past -= discard
            seq.pos -= discard
            seq.cells = remaining
            return True
        if seq.request.media is not None or seq.images:
            # Evaluating again would need the images' embeddings, which only the prompt's positions
            # carry: a sequence with images ends at the full context instead (done_reason "length").
            return False
        llama.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
        seq.inputs = [*remaining, token]
        seq.prefilled = seq.n_past = seq.pos = 0
        seq.cells = []
        seq.pending_token = None
        return True

    def _flush(self, seq: _Sequence) -> list[Event]:
        """Release text held back for stop matching or an unfinished UTF-8 sequence."""
        text = seq.held + seq.decoder.decode(b"", final=True)
        seq.held = ""
        return [self._text_event(seq, text)] if text or seq.logprobs else []

    def _finish(self, seq: _Sequence, reason: DoneReason, error: str | None = None) -> DoneEvent:
        now = time.perf_counter_ns()
        first = seq.first_token_ns or now
        tokens = [*seq.request.prompt, *seq.generated]
        if not seq.admitted:
            cached, images = seq.slot.cached, seq.slot.images  # never touched: the slot keeps what it held
        elif self.reuse_prefix and reason != "error":
            # What its cells hold, in order (shifted or not): the next request may start from them.
            cached, images = list(seq.cells), seq.images
        else:
            llama.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
            cached, images = [], []
        seq.sampler.free_all()
        with self._lock:
            self._running.remove(seq)
            self._slots.give_back(seq.slot, cached, images)
        return DoneEvent(
            key=seq.request.key,
            reason=reason,
            prompt_tokens=len(seq.request.prompt),
            prompt_ns=max(first - seq.submitted_ns, 0),
            eval_tokens=len(seq.generated),
            eval_ns=max(now - first, 0),
            tokens=tokens,
            error=error,
            cached_tokens=seq.cached if seq.admitted else 0,
        )

    def cached_prefixes(self) -> list[int]:
        """How many tokens each idle slot holds, by slot id (in use: -1); for tests and diagnostics."""
        with self._lock:
            return [-1 if s.in_use else len(s.cached) for s in self._slots.slots]

    def close(self) -> None:
        """Free the context (after any step in progress); every running sequence is dropped."""
        with self._context_lock:
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
