"""Clients that leave: mid-stream the slot frees at the next decode step; while queued the job never starts.

tests/e2e/test_lifecycle.py checks both with a loose 3 s bound on the session stack; here the bound is
the issue's, measured against the decode step of the same stream, and the evidence is the metrics the
operator sees: the worker's herd_sequences gauge and the API's herd_queue_waiting and herd_slots_busy.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.supervisor import Stack
from tests.e2e.conftest import GEMMA, start_stack
from tests.reliability.conftest import job_starts
from tests.support.prompts import endless_stream
from workers.decode_loop import POLL_S

LONG = endless_stream(GEMMA)
# Detecting the closed connection (uvicorn) and writing the cancel flag (one Redis round trip), and the
# worker publishing its new state after the step that freed the slot: fixed costs, not decode steps.
OVERHEAD_S = 0.3


@pytest.fixture(scope="module")
def one_slot(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "8"}
    with start_stack(models_dir, tmp_path_factory.mktemp("run-disconnect"), env=env) as stack:
        yield stack


# One keep-alive connection for all the scrapes. `httpx.get` builds a client (and its TLS context) per
# call, about 30 ms of CPU: polled every 10 ms it took a whole core, and on a 2-core machine a decode whose
# threads take every core slowed down to as much as 600 ms a step, which the test then measured.
_SCRAPER = httpx.Client(timeout=5)


def _gauge(url: str, name: str, **labels: str) -> float:
    text = _SCRAPER.get(url).text
    values = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return float(sum(values))


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until predicate() held (polled every 10 ms); fails naming `what` after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)
    return time.monotonic() - started


def test_disconnect_mid_stream_frees_the_slot_at_the_next_decode_step(one_slot: Stack) -> None:
    (worker_metrics,) = one_slot.worker_metrics_urls
    busy = {"worker": "w0", "model": GEMMA, "state": "busy"}
    with (
        httpx.Client(base_url=one_slot.settings.base_url, timeout=60) as c,
        c.stream("POST", "/api/generate", json=LONG) as r,
    ):
        arrivals = []
        lines = r.iter_lines()  # kept: once collected, the dropped iterator would close the stream
        for line in lines:
            if line:
                assert json.loads(line)["done"] is False
                arrivals.append(time.monotonic())
            if len(arrivals) == 40:
                break
        _wait(lambda: _gauge(worker_metrics, "herd_sequences", **busy) == 1, 10, "one busy sequence")
    # The connection is closed here.
    freed_after = _wait(lambda: _gauge(worker_metrics, "herd_sequences", **busy) == 0, 10, "the slot freed")
    # The decode step of this very stream, from its tokens after the first (prefill) one. They may arrive a
    # few together (HERD_STREAM_INTERVAL_MS), so over their whole span, not pairwise.
    step = (arrivals[-1] - arrivals[1]) / (len(arrivals) - 2)
    print(
        f"\ndisconnect mid-stream: slot free {freed_after * 1000:.0f} ms after the client closed; "
        f"decode step {step * 1000:.0f} ms"
    )
    # The step in flight when the flag lands, and the one boundary after it where the sequence is dropped;
    # the worker reads the flags with its sends (paced, on this CPU stack) or every POLL_S, not every step.
    assert freed_after <= step + POLL_S + OVERHEAD_S


def test_disconnect_while_queued_withdraws_the_job_before_any_worker_sees_it(one_slot: Stack) -> None:
    base = one_slot.settings.base_url
    api_metrics = f"http://127.0.0.1:{one_slot.settings.metrics_port}/metrics"
    (worker_metrics,) = one_slot.worker_metrics_urls
    queued_id = f"queued-{uuid.uuid4().hex}"
    with httpx.Client(base_url=base, timeout=60) as c, c.stream("POST", "/api/generate", json=LONG) as first:
        lines = first.iter_lines()  # kept: dropping it would close the first stream and free the slot
        assert next(line for line in lines if line)
        # A request that waits behind the only slot (seen waiting in the API's metrics), sent on a bare
        # socket so the test decides the exact moment its client goes away.
        body = json.dumps({**LONG, "stream": False}).encode()
        host, port = one_slot.settings.base_url.removeprefix("http://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"X-Request-ID: {queued_id}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        _wait(lambda: _gauge(api_metrics, "herd_queue_waiting") == 1, 10, "the second request waiting")
        sock.close()
        withdrawn_after = _wait(
            lambda: _gauge(api_metrics, "herd_queue_waiting") == 0, 5, "the job withdrawn"
        )
        assert _gauge(api_metrics, "herd_slots_busy", worker="w0") == 1  # still the first request
    busy = {"worker": "w0", "model": GEMMA, "state": "busy"}
    _wait(lambda: _gauge(worker_metrics, "herd_sequences", **busy) == 0, 10, "the first slot freed")
    # The slot is free now: had the withdrawn job still been queued, the worker would take it at once.
    observed = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        observed.append(
            _gauge(worker_metrics, "herd_sequences", **busy) + _gauge(api_metrics, "herd_queue_waiting")
        )
        time.sleep(0.05)
    print(f"\ndisconnect while queued: withdrawn {withdrawn_after * 1000:.0f} ms after the client left")
    assert max(observed) == 0
    assert job_starts(one_slot)[queued_id] == 0
