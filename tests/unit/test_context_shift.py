"""Context shifting when a generation fills num_ctx, on a real tiny llama model (Ollama's `shift`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import llama_cpp as llama
import pytest

from tests.support.tiny_gguf import write_tiny_llama
from workers import prepare
from workers.engine import OPEN_ENDED_CONTEXTS, BatchEngine
from workers.engine_io import DoneEvent, SequenceRequest, TokenEvent
from workers.llama import LlamaModel
from workers.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)
N_CTX = 64


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaModel]:
    m = LlamaModel(write_tiny_llama(Path(tmp_path_factory.mktemp("gguf")) / "shift.gguf", seed=3))
    yield m
    m.close()


def run(
    engine: BatchEngine, request: SequenceRequest, each_step: Callable[[], None] | None = None
) -> tuple[str, DoneEvent]:
    engine.submit(request)
    text = ""
    for _ in range(10_000):
        for event in engine.step():
            if isinstance(event, TokenEvent):
                text += event.text
            else:
                return text, event
        if each_step is not None:
            each_step()
    raise AssertionError("the sequence never finished")


def prompt(model: LlamaModel) -> list[int]:
    return model.tokenize("the quick brown fox jumps over the lazy dog")


def test_shift_generates_past_the_context_up_to_num_predict(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=N_CTX)
    try:
        assert engine.can_shift
        _, done = run(engine, SequenceRequest("a", prompt(model), GREEDY, max_tokens=150))
    finally:
        engine.close()
    assert done.reason == "length"
    assert done.eval_tokens == 150 > N_CTX
    assert len(done.tokens) == len(prompt(model)) + 150  # the output keeps every token, shifted or not


def test_without_shift_the_full_context_ends_with_length(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=N_CTX)
    try:
        _, done = run(engine, SequenceRequest("a", prompt(model), GREEDY, max_tokens=150, shift=False))
    finally:
        engine.close()
    assert done.reason == "length"
    assert len(done.tokens) == N_CTX
    assert done.eval_tokens == N_CTX - len(prompt(model)) < 150


def test_shift_keeps_the_first_num_keep_tokens_and_moves_the_rest_down(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=N_CTX)
    memory = engine._memory
    seen: list[tuple[int, int, int]] = []

    def watch() -> None:
        for seq in engine._running:
            if seq.pending_token is not None:
                lo = llama.llama_memory_seq_pos_min(memory, seq.seq_id)
                hi = llama.llama_memory_seq_pos_max(memory, seq.seq_id)
                seen.append((lo, hi, seq.n_past))

    try:
        request = SequenceRequest("a", prompt(model), GREEDY, max_tokens=3 * N_CTX, num_keep=4)
        _, done = run(engine, request, watch)
    finally:
        engine.close()
    assert done.eval_tokens == 3 * N_CTX
    # Never past the context; the kept start stays at position 0; the cells are contiguous.
    assert all(lo == 0 and hi == n_past - 1 < N_CTX for lo, hi, n_past in seen)
    # It shifted (n_past went down) by half of what follows the kept BOS + 4 tokens, less the one token
    # decoded in the same step.
    drops = [a[2] - b[2] for a, b in itertools.pairwise(seen) if b[2] < a[2]]
    keep = 4 + 1
    assert drops and all(d == (N_CTX - keep) // 2 - 1 for d in drops)


def test_num_keep_counts_the_bos_and_minus_one_keeps_the_prompt(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=N_CTX)
    try:
        tokens = prompt(model)
        assert engine.shift_keep(SequenceRequest("a", tokens, GREEDY, num_keep=4)) == 5  # + BOS
        assert engine.shift_keep(SequenceRequest("a", tokens, GREEDY, num_keep=-1)) == len(tokens) + 1
        assert engine.shift_keep(SequenceRequest("a", tokens, GREEDY, num_keep=1000)) == N_CTX - 1
    finally:
        engine.close()


def test_open_ended_generation_is_bounded_at_ten_contexts(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=16)
    try:
        assert engine.token_limit(SequenceRequest("a", [1], GREEDY)) == OPEN_ENDED_CONTEXTS * 16
        assert engine.token_limit(SequenceRequest("a", [1], GREEDY, max_tokens=10**6)) == 160
        assert engine.token_limit(SequenceRequest("a", [1], GREEDY, max_tokens=20)) == 20
        assert engine.token_limit(SequenceRequest("a", [1], GREEDY, shift=False)) is None
        tokens = model.tokenize("the quick")
        _, done = run(engine, SequenceRequest("a", tokens, GREEDY))
    finally:
        engine.close()
    assert done.reason == "length" and done.eval_tokens == 160


def test_num_keep_comes_from_the_options_with_ollamas_default() -> None:
    assert prepare.num_keep({}) == 4
    assert prepare.num_keep({"num_keep": None}) == 4
    assert prepare.num_keep({"num_keep": -1}) == -1
    assert prepare.num_keep({"num_keep": 0}) == 0
