"""The first step after an idle spell waits for a burst's queued jobs (workers/start_gate.py): with the
real engine, jobs handed over one by one while more wait all get their first token from one step."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.prompts import OPENINGS
from workers.engine import BatchEngine
from workers.engine_io import SequenceRequest, TokenEvent
from workers.llama import LlamaModel
from workers.sampling import SamplingParams
from workers.start_gate import StartGate

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def model(gemma_gguf: Path) -> Iterator[LlamaModel]:
    m = LlamaModel(gemma_gguf, repack=False)
    yield m
    m.close()


def test_a_lone_job_is_never_held() -> None:
    gate = StartGate(settle_s=5, max_wait_s=5)
    gate.handed_over(more_waiting=False)
    assert gate.wait(threading.Event()) < 0.05


def test_the_step_waits_for_the_burst_then_goes_at_its_last_hand_over(model: LlamaModel) -> None:
    gate = StartGate(settle_s=2, max_wait_s=5)
    engine = BatchEngine(model, n_ctx=256, n_parallel=4)
    keys = ["a", "b", "c"]

    def main_thread() -> None:
        """As the worker's main thread: each job is prepared and handed over after RQ's bookkeeping."""
        for i, key in enumerate(keys):
            engine.submit(SequenceRequest(key, model.tokenize(OPENINGS[i]), GREEDY, max_tokens=4))
            gate.handed_over(more_waiting=i < len(keys) - 1)
            time.sleep(0.05)

    try:
        feeder = threading.Thread(target=main_thread)
        feeder.start()
        while not engine.busy:
            time.sleep(0.001)
        waited = gate.wait(threading.Event())
        first_step = engine.step()
        feeder.join()
    finally:
        engine.close()
    assert 0.08 < waited < 1.5  # two hand-overs later, well before the settle time ran out
    assert {e.key for e in first_step if isinstance(e, TokenEvent)} == set(keys)


def test_a_burst_that_stops_coming_releases_the_step_after_the_settle_time() -> None:
    gate = StartGate(settle_s=0.1, max_wait_s=5)
    gate.handed_over(more_waiting=True)  # the next job went to another worker
    waited = gate.wait(threading.Event())
    assert 0.05 < waited < 1


def test_the_hold_never_passes_its_cap_or_a_stop() -> None:
    gate = StartGate(settle_s=10, max_wait_s=0.1)
    gate.handed_over(more_waiting=True)
    assert gate.wait(threading.Event()) < 1
    gate = StartGate(settle_s=10, max_wait_s=10)
    gate.handed_over(more_waiting=True)
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    assert gate.wait(stop) < 5
