"""When the decode loop sends what its steps made (workers/stream_pacer.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.engine_io import DoneEvent, TokenEvent
from workers.settings import WorkerSettings
from workers.stream_pacer import StreamPacer, stream_interval_s


def _token(key: str) -> TokenEvent:
    return TokenEvent(key, "x", None)


def _done(key: str) -> DoneEvent:
    return DoneEvent(
        key=key, reason="stop", prompt_tokens=3, prompt_ns=1, eval_tokens=2, eval_ns=1, tokens=[]
    )


def test_a_streams_first_output_goes_at_once_then_tokens_wait_for_the_interval() -> None:
    pacer = StreamPacer(0.05)
    pacer.sent(10.0)
    assert pacer.due([_token("a")], now=10.001)  # a's first token: time to first token is never paced
    pacer.sent(10.001)
    assert not pacer.due([_token("a")], now=10.012, step_s=0.011)
    assert not pacer.due([_token("a")], now=10.023, step_s=0.011)
    # One more step would hold the oldest token past the interval: it goes now.
    assert pacer.due([_token("a")], now=10.045, step_s=0.011)
    assert abs(pacer.wait_s(10.02) - 0.031) < 1e-9


def test_an_end_goes_at_once_and_a_new_stream_of_the_same_key_is_new_again() -> None:
    pacer = StreamPacer(0.05)
    assert pacer.due([_token("a")], now=1.0)
    pacer.sent(1.0)
    assert pacer.due([_token("b")], now=1.001)  # another stream's first output
    pacer.sent(1.001)
    assert pacer.due([_done("a")], now=1.002)
    pacer.sent(1.002)
    assert pacer.due([_token("a")], now=1.003)


def test_an_interval_of_zero_sends_every_step() -> None:
    pacer = StreamPacer(0.0)
    pacer.due([_token("a")], now=1.0)
    pacer.sent(1.0)
    assert pacer.due([_token("a")], now=1.0001)
    assert pacer.due([], now=1.0002)


def test_by_default_tokens_are_paced_only_where_decoding_takes_every_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HERD_STREAM_INTERVAL_MS", "")  # compose passes an unset variable on as ""
    unset = WorkerSettings().stream_interval_ms
    assert unset is None
    assert stream_interval_s(unset, decode_takes_every_core=True) == 0.1
    assert stream_interval_s(unset, decode_takes_every_core=False) == 0.0  # a GPU worker: as Ollama
    monkeypatch.setenv("HERD_STREAM_INTERVAL_MS", "30")
    assert stream_interval_s(WorkerSettings().stream_interval_ms, decode_takes_every_core=False) == 0.03


def test_an_interval_out_of_range_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_STREAM_INTERVAL_MS", "5000")
    with pytest.raises(ValidationError, match="HERD_STREAM_INTERVAL_MS"):
        WorkerSettings()
