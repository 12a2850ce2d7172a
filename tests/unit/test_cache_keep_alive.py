"""The model cache with a real tiny model: a keep_alive of any size never breaks its timestamps, and a hold
is never left behind by a load that fails after it was taken."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from herd.durations import FOREVER, MAX_KEEP_ALIVE_S
from herd.names import ModelName
from herd.store import ModelStore, StoredModel
from tests.support.tiny_gguf import write_tiny_llama
from workers.cache import InvalidKeepAlive, ModelCache, bound_keep_alive

NAME = "tiny-keep:latest"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> StoredModel:
    root = tmp_path_factory.mktemp("models")
    store = ModelStore(root)
    gguf = write_tiny_llama(Path(tmp_path_factory.mktemp("gguf")) / "keep.gguf", seed=5)
    store.import_gguf(ModelName.parse(NAME), gguf)
    return store.get(ModelName.parse(NAME))


def _cache(**kwargs: object) -> ModelCache:
    return ModelCache(max_loaded=2, n_parallel=1, threads=1, n_gpu_layers=0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "held"),
    [
        (300.0, 300.0),
        (0.0, 0.0),
        (-5.0, FOREVER),
        (MAX_KEEP_ALIVE_S, MAX_KEEP_ALIVE_S),
        (1e15, FOREVER),  # the audit's value: ~31 million years
        (math.inf, FOREVER),
    ],
)
def test_a_keep_alive_beyond_the_longest_duration_is_for_ever(given: float, held: float) -> None:
    assert bound_keep_alive(given) == held


def test_a_nan_keep_alive_is_refused_naming_it() -> None:
    with pytest.raises(InvalidKeepAlive, match="invalid keep_alive nan"):
        bound_keep_alive(math.nan)


@pytest.mark.parametrize("keep_alive", [1e15, 1e300, MAX_KEEP_ALIVE_S])
def test_a_huge_keep_alive_shows_an_expiry_while_held_and_after_release(
    stored: StoredModel, keep_alive: float
) -> None:
    # The audit's crash: state() (the heartbeat's /api/ps document) overflowed datetime and time_t.
    cache = _cache()
    try:
        loaded, _ = cache.acquire(stored, n_ctx=64, keep_alive=keep_alive)
        held = cache.states()
        cache.release(loaded)
        released = cache.states()
        cache.expire()  # the decode loop's expiry pass, every second
        assert [s.name for s in cache.states()] == [stored.name.display]  # still loaded
        for states in (held, released):
            (state,) = states
            expires = datetime.fromisoformat(state.expires_at.replace("Z", "+00:00"))
            assert expires.year > datetime.now(UTC).year + 90
        assert loaded.users == 0
    finally:
        cache.close()


def test_a_nan_keep_alive_holds_nothing(stored: StoredModel) -> None:
    cache = _cache()
    try:
        with pytest.raises(InvalidKeepAlive):
            cache.acquire(stored, n_ctx=64, keep_alive=math.nan)
        assert cache.states() == []
    finally:
        cache.close()


def test_a_load_that_fails_after_taking_its_hold_lets_it_go(stored: StoredModel) -> None:
    calls = 0

    def on_change() -> None:  # the runtime's callback; failing here is a failure after the hold
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("state publisher failed")

    cache = _cache(on_change=on_change)
    try:
        with pytest.raises(RuntimeError, match="state publisher failed"):
            cache.acquire(stored, n_ctx=64, keep_alive=300)
        (state,) = cache.states()
        assert state.busy == 0  # released: its keep_alive clock runs, and eviction may take it
        loaded, load_ns = cache.acquire(stored, n_ctx=64, keep_alive=300)
        assert load_ns == 0 and loaded.users == 1
        cache.release(loaded)
    finally:
        cache.close()
