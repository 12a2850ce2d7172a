"""The batching engine on the real bundled model: greedy determinism, batching, stops, cancel, slots."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from herd.gguf_meta import read_gguf_info
from herd.memory import MIB, kv_bytes_per_token, kv_cache_bytes
from tests.support.prompts import OPENINGS
from workers.engine import BatchEngine, decode_groups
from workers.engine_io import DoneEvent, NoFreeSlot, SequenceRequest, TokenEvent
from workers.llama import LlamaModel
from workers.sampling import SamplingParams, SequenceSampler
from workers.stop_strings import stop_prefix_len

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)
PROMPTS = OPENINGS


@pytest.fixture(scope="module")
def model(gemma_gguf: Path) -> Iterator[LlamaModel]:
    m = LlamaModel(gemma_gguf)
    yield m
    m.close()


def run_all(engine: BatchEngine) -> tuple[dict[str, str], dict[str, DoneEvent]]:
    texts: dict[str, str] = {}
    done: dict[str, DoneEvent] = {}
    for _ in range(10_000):
        if not engine.busy:
            break
        for event in engine.step():
            if isinstance(event, TokenEvent):
                texts[event.key] = texts.get(event.key, "") + event.text
            else:
                done[event.key] = event
    return texts, done


def _solo(model: LlamaModel, n_parallel: int) -> dict[str, str]:
    engine = BatchEngine(model, n_ctx=256, n_parallel=n_parallel, batch_invariant=True)
    try:
        out: dict[str, str] = {}
        for i, prompt in enumerate(PROMPTS):
            engine.submit(SequenceRequest(str(i), model.tokenize(prompt), GREEDY, max_tokens=24))
            texts, _ = run_all(engine)
            out.update(texts)
        return out
    finally:
        engine.close()


def test_greedy_output_does_not_depend_on_the_number_of_slots(model: LlamaModel) -> None:
    assert _solo(model, 1) == _solo(model, 8)


@pytest.fixture(scope="module")
def plain_model(gemma_gguf: Path) -> Iterator[LlamaModel]:
    """The weights as the batch-invariant cache loads them: not repacked."""
    m = LlamaModel(gemma_gguf, repack=False)
    yield m
    m.close()


def _generate_together(model: LlamaModel, indexes: list[int], tokens: int) -> dict[str, str]:
    engine = BatchEngine(model, n_ctx=256, n_parallel=8, batch_invariant=True)
    try:
        for i in indexes:
            engine.submit(SequenceRequest(str(i), model.tokenize(PROMPTS[i]), GREEDY, max_tokens=tokens))
        texts, _ = run_all(engine)
        return texts
    finally:
        engine.close()


def test_greedy_output_is_identical_alone_and_beside_seven_others(plain_model: LlamaModel) -> None:
    together = _generate_together(plain_model, list(range(8)), 64)
    for i in range(8):
        alone = _generate_together(plain_model, [i], 64)
        assert alone[str(i)] == together[str(i)], PROMPTS[i]


def test_decode_groups_stay_below_the_kernel_switch() -> None:
    assert [len(g) for g in decode_groups(list(range(8)), 7)] == [4, 4]  # type: ignore[arg-type]
    assert [len(g) for g in decode_groups(list(range(7)), 7)] == [7]  # type: ignore[arg-type]
    assert [len(g) for g in decode_groups(list(range(15)), 7)] == [5, 5, 5]  # type: ignore[arg-type]
    assert decode_groups([], 7) == []


def test_eight_sequences_decode_together_to_their_full_length(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=256, n_parallel=8)
    try:
        for i, prompt in enumerate(PROMPTS):
            engine.submit(SequenceRequest(str(i), model.tokenize(prompt), GREEDY, max_tokens=24))
        assert engine.free_slots == 0
        texts, done = run_all(engine)
    finally:
        engine.close()
    assert sorted(done) == sorted(str(i) for i in range(len(PROMPTS)))
    assert all(d.reason == "length" and d.eval_tokens == 24 for d in done.values())
    assert all(texts[k].strip() for k in done)
    assert engine.free_slots == 8


def test_max_tokens_and_stats(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=256)
    try:
        prompt = model.tokenize(PROMPTS[1])
        engine.submit(SequenceRequest("a", prompt, GREEDY, max_tokens=10))
        _, done = run_all(engine)
    finally:
        engine.close()
    event = done["a"]
    assert event.reason == "length"
    assert event.eval_tokens == 10
    assert event.prompt_tokens == len(prompt)
    assert event.tokens[: len(prompt)] == prompt and len(event.tokens) == len(prompt) + 10
    assert event.prompt_ns > 0 and event.eval_ns > 0


def test_stop_string_cuts_output(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=256)
    try:
        engine.submit(SequenceRequest("free", model.tokenize(PROMPTS[1]), GREEDY, max_tokens=40))
        free, _ = run_all(engine)
        text = free["free"]
        # Stop on a word that the unconstrained output contains past its start.
        word = next(w for w in text.split()[2:] if len(w) > 3)
        engine.submit(
            SequenceRequest("stopped", model.tokenize(PROMPTS[1]), GREEDY, max_tokens=40, stop=[word])
        )
        stopped, done = run_all(engine)
    finally:
        engine.close()
    assert done["stopped"].reason == "stop"
    assert word not in stopped.get("stopped", "")
    assert text.startswith(stopped.get("stopped", ""))
    assert stopped.get("stopped", "") == text[: text.index(word)]


def test_cancel_frees_the_slot_at_the_next_step(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=256, n_parallel=1)
    try:
        engine.submit(SequenceRequest("a", model.tokenize(PROMPTS[0]), GREEDY))
        engine.step()
        with pytest.raises(NoFreeSlot):
            engine.submit(SequenceRequest("b", model.tokenize(PROMPTS[0]), GREEDY))
        engine.cancel("a")
        events = engine.step()
        assert [e.reason for e in events if isinstance(e, DoneEvent)] == ["cancel"]
        assert engine.free_slots == 1 and engine.busy == 0
        engine.submit(SequenceRequest("b", model.tokenize(PROMPTS[0]), GREEDY, max_tokens=3))
        _, done = run_all(engine)
        assert done["b"].eval_tokens == 3
    finally:
        engine.close()


def test_context_full_ends_with_length(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=32)
    try:
        prompt = model.tokenize(PROMPTS[1])
        engine.submit(SequenceRequest("a", prompt, GREEDY, shift=False))
        _, done = run_all(engine)
    finally:
        engine.close()
    assert done["a"].reason in ("length", "stop")
    assert len(done["a"].tokens) <= 32


def test_prompt_longer_than_context_is_refused(model: LlamaModel) -> None:
    engine = BatchEngine(model, n_ctx=16)
    try:
        with pytest.raises(ValueError, match="does not fit num_ctx 16"):
            engine.submit(SequenceRequest("a", model.tokenize("word " * 40), GREEDY))
    finally:
        engine.close()


def test_long_prompt_is_prefilled_in_chunks_beside_running_streams(plain_model: LlamaModel) -> None:
    """Mixed steps: every running stream gets its token at every step while a long prompt is prefilled
    in the rest of each batch, so a stream waits at most one chunk; the new one starts when it is in."""
    model = plain_model
    engine = BatchEngine(model, n_ctx=512, n_parallel=3, n_batch=32)
    try:
        for key in ("a", "b"):
            engine.submit(
                SequenceRequest(key, model.tokenize(PROMPTS[int(key == "b")]), GREEDY, max_tokens=10)
            )
        engine.step()  # both prompts fit one batch: prefilled together, each has its first token
        long_prompt = model.tokenize("word " * 150)
        engine.submit(SequenceRequest("long", long_prompt, GREEDY, max_tokens=2))
        # Each step carries a and b (2 rows) and 30 prompt tokens: the 151 tokens take 6 steps.
        chunks = -(-len(long_prompt) // (32 - 2))
        for step in range(chunks):
            events = engine.step()
            keys = [e.key for e in events if isinstance(e, (TokenEvent, DoneEvent))]
            assert {"a", "b"} <= set(keys), f"a running stream was stalled at step {step}"
            assert ("long" in keys) == (step == chunks - 1)
        _, done = run_all(engine)
    finally:
        engine.close()
    assert done["long"].eval_tokens == 2 and done["long"].cached_tokens == 0


def test_turn_two_evaluates_only_its_new_tokens(plain_model: LlamaModel) -> None:
    """Prefix reuse: the follow-up keeps the first turn's cells (prompt and reply) and evaluates the rest."""
    model = plain_model
    history = model.tokenize("word " * 200 + PROMPTS[0])
    engine = BatchEngine(model, n_ctx=512, n_parallel=2)
    try:
        engine.submit(SequenceRequest("turn1", history, GREEDY, max_tokens=4))
        _, first = run_all(engine)
        turn1 = first["turn1"]
        follow_up = turn1.tokens + model.tokenize(" And then", add_special=False)
        engine.submit(SequenceRequest("turn2", follow_up, GREEDY, max_tokens=4))
        _, second = run_all(engine)
    finally:
        engine.close()
    turn2 = second["turn2"]
    # The reply's last token was sampled, never decoded: every cell before it is reused.
    assert turn1.cached_tokens == 0
    assert turn2.cached_tokens == len(turn1.tokens) - 1
    assert turn2.prompt_tokens == len(follow_up)  # Ollama's prompt_eval_count counts cached tokens too
    # 4 tokens evaluated instead of 200-odd: far less time before the first token.
    assert turn2.prompt_ns < turn1.prompt_ns / 2, (turn2.prompt_ns, turn1.prompt_ns)


def test_an_idle_cached_sequence_is_evicted_least_recently_used_first(plain_model: LlamaModel) -> None:
    model = plain_model
    engine = BatchEngine(model, n_ctx=256, n_parallel=2)

    def run_one(key: str, prompt: str) -> DoneEvent:
        engine.submit(SequenceRequest(key, model.tokenize(prompt), GREEDY, max_tokens=2))
        return run_all(engine)[1][key]

    try:
        a, b = run_one("a", PROMPTS[1]), run_one("b", PROMPTS[2])
        assert sorted(engine.cached_prefixes()) == sorted([len(a.tokens) - 1, len(b.tokens) - 1])
        run_one("c", PROMPTS[3])  # shares no useful prefix with either: takes the least recently used
        again_b = run_one("b2", PROMPTS[2])
        again_a = run_one("a2", PROMPTS[1])
    finally:
        engine.close()
    assert again_b.cached_tokens == len(model.tokenize(PROMPTS[2])) - 1  # b's cells stayed: all reused
    assert again_a.cached_tokens <= 1  # a's were evicted for c (at most BOS is shared with another)


def test_deterministic_mode_keeps_nothing_across_requests(plain_model: LlamaModel) -> None:
    engine = BatchEngine(plain_model, n_ctx=256, batch_invariant=True)
    try:
        for key in ("x", "y"):
            engine.submit(SequenceRequest(key, plain_model.tokenize(PROMPTS[0]), GREEDY, max_tokens=2))
            _, done = run_all(engine)
            assert done[key].cached_tokens == 0
        assert engine.cached_prefixes() == [0]
    finally:
        engine.close()


def test_vectorised_sampling_matches_the_native_chain(plain_model: LlamaModel) -> None:
    logits = np.random.default_rng(3).normal(size=plain_model.n_vocab).astype(np.float32)
    greedy = SequenceSampler(plain_model, GREEDY, 64)
    top1 = SequenceSampler(plain_model, SamplingParams(temperature=0.8, top_k=1, seed=1), 64)
    seeded = [SequenceSampler(plain_model, SamplingParams(temperature=0.8, seed=5), 64) for _ in range(2)]
    try:
        assert greedy.pick(logits) == int(np.argmax(logits)) == top1.pick(logits)
        draws = [[s.pick(logits) for _ in range(20)] for s in seeded]
        assert draws[0] == draws[1]  # the same seed, the same tokens
        top40 = set(np.argsort(logits)[-40:].tolist())
        assert set(draws[0]) <= top40 and len(set(draws[0])) > 1
    finally:
        for sampler in (greedy, top1, *seeded):
            sampler.free_all()


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [("hello wor", ["world"], 3), ("hello", ["xyz"], 0), ("ab<", ["<end>"], 1), ("", ["a"], 0)],
)
def test_stop_prefix_is_held_back(text: str, stops: list[str], held: int) -> None:
    assert stop_prefix_len(text, stops) == held


def test_grammar_holds_whichever_token_the_free_chain_would_pick(model: LlamaModel) -> None:
    """The grammar is checked on the freely sampled token and re-sampled on refusal: output stays valid."""
    engine = BatchEngine(model, n_ctx=256, n_parallel=8)
    try:
        for seed in range(8):
            sampling = SamplingParams(temperature=1.5, seed=seed, grammar='root ::= "yes" | "no" | "maybe"')
            engine.submit(
                SequenceRequest(str(seed), model.tokenize("Is the sky green?"), sampling, max_tokens=20)
            )
        texts, done = run_all(engine)
    finally:
        engine.close()
    assert all(d.reason == "stop" for d in done.values())
    assert {texts.get(str(s), "") for s in range(8)} <= {"yes", "no", "maybe"}


def test_kv_cache_is_window_sized_for_sliding_window_layers(
    plain_model: LlamaModel, gemma_gguf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Gemma 3's 15 sliding-window layers get window + one micro-batch per sequence, not num_ctx, and
    the estimate (herd/memory.py; /api/ps's size) is what llama.cpp allocates with a stream per sequence."""
    caplog.set_level(logging.DEBUG, logger="workers.llama")
    engine = BatchEngine(plain_model, n_ctx=4096, n_parallel=8, batch_invariant=True)
    engine.close()
    allocated = sum(
        float(mib) * MIB
        for record in caplog.records
        for mib in re.findall(r"CPU KV buffer size =\s*([\d.]+) MiB", record.getMessage())
    )
    info = read_gguf_info(gemma_gguf)
    assert allocated == kv_cache_bytes(info, n_ctx=4096, n_parallel=8) == 216 * MIB
    assert kv_bytes_per_token(info) * 4096 * 8 == 576 * MIB  # what a full-size cache would take


def test_a_window_sized_cache_shifts_by_evaluating_the_kept_tokens_again(plain_model: LlamaModel) -> None:
    """Gemma 3's window-sized cache cannot move cells: a full context is cleared and what a shift keeps
    is evaluated again, after which the generation goes on past num_ctx."""
    model = plain_model
    engine = BatchEngine(model, n_ctx=1030)  # more than the window (512) + a micro-batch (512)
    try:
        assert not engine.can_shift
        prompt = model.tokenize("word " * 1022)
        engine.submit(SequenceRequest("a", prompt, GREEDY, max_tokens=12))
        _, done = run_all(engine)
        # The cells it held at the end are what a follow-up reuses: fewer than prompt + output.
        cached = engine.cached_prefixes()[0]
    finally:
        engine.close()
    assert done["a"].reason == "length" and done["a"].eval_tokens == 12
    assert len(prompt) + 12 > 1030 > cached


def test_a_prompt_sharing_a_cached_prefix_copies_its_cells_and_leaves_that_cache_whole(
    plain_model: LlamaModel,
) -> None:
    """Ollama's fork: chat B shares chat A's long opening; B takes the empty slot with A's prefix cells
    copied in (evaluating only its own tokens, with the same output as from scratch), and A's follow-up
    still finds every one of its cells."""
    model = plain_model
    opening = model.tokenize("word " * 120)
    chat_a = opening + model.tokenize(PROMPTS[0], add_special=False)
    chat_b = opening + model.tokenize(PROMPTS[1], add_special=False)
    fresh = BatchEngine(model, n_ctx=512, n_parallel=1)
    try:
        fresh.submit(SequenceRequest("b", chat_b, GREEDY, max_tokens=8))
        expected, _ = run_all(fresh)
    finally:
        fresh.close()
    engine = BatchEngine(model, n_ctx=512, n_parallel=2)
    try:
        engine.submit(SequenceRequest("a", chat_a, GREEDY, max_tokens=4))
        a = run_all(engine)[1]["a"]
        engine.submit(SequenceRequest("b", chat_b, GREEDY, max_tokens=8))
        texts, done = run_all(engine)
        engine.submit(
            SequenceRequest("a2", a.tokens + model.tokenize(" Then", add_special=False), GREEDY, max_tokens=2)
        )
        a2 = run_all(engine)[1]["a2"]
    finally:
        engine.close()
    assert done["b"].cached_tokens == len(opening)
    assert texts["b"] == expected["b"]
    assert a2.cached_tokens == len(a.tokens) - 1  # A's slot was not touched by B


def test_a_prompt_sent_again_evaluates_only_its_last_token(plain_model: LlamaModel) -> None:
    """The same prompt again (a retried or repeated request): its slot also holds the reply, which is
    dropped, and every prompt cell but the last is reused, as llama-server's prompt cache does."""
    model = plain_model
    prompt = model.tokenize(PROMPTS[2])
    engine = BatchEngine(model, n_ctx=256, n_parallel=2)
    try:
        engine.submit(SequenceRequest("first", prompt, GREEDY, max_tokens=40))
        first_texts, first = run_all(engine)
        engine.submit(SequenceRequest("again", prompt, GREEDY, max_tokens=40))
        texts, again = run_all(engine)
    finally:
        engine.close()
    assert len(first["first"].tokens) > 2 * len(prompt)  # the reply is longer than the prompt
    assert again["again"].cached_tokens == len(prompt) - 1
    assert texts["again"] == first_texts["first"]
