"""Tokens are paced (workers/stream_pacer.py): a stream's first token goes at once, the next ones a few
together at most HERD_STREAM_INTERVAL_MS apart, each still its own NDJSON line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import GEMMA, start_stack

INTERVAL_S = 0.3  # far above a decode step of the bundled model, so the grouping is plain to see


@pytest.fixture(scope="module")
def paced(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    env = {"HERD_STREAM_INTERVAL_MS": str(int(INTERVAL_S * 1000))}
    with (
        start_stack(models_dir, tmp_path_factory.mktemp("paced"), env=env) as stack,
        httpx.Client(base_url=stack.settings.base_url, timeout=120) as client,
    ):
        yield client


def _stream(client: httpx.Client, tokens: int) -> tuple[float, list[tuple[float, dict[str, object]]]]:
    body = {
        "model": GEMMA,
        "prompt": "Write a long story about the sea.",
        "options": {"temperature": 0, "num_predict": tokens},
    }
    start = time.perf_counter()
    with client.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200
        lines = [(time.perf_counter(), json.loads(line)) for line in r.iter_lines() if line]
    return start, lines


def _groups(times: list[float]) -> list[list[float]]:
    """Arrival times split where more than 30 ms pass between two lines."""
    groups: list[list[float]] = [[times[0]]]
    for t in times[1:]:
        if t - groups[-1][-1] > 0.03:
            groups.append([])
        groups[-1].append(t)
    return groups


def test_the_first_token_goes_at_once_and_the_rest_a_few_together(paced: httpx.Client) -> None:
    _stream(paced, 4)  # the model loaded
    start, lines = _stream(paced, 64)
    tokens = [(t, d) for t, d in lines if not d["done"]]
    assert len(tokens) >= 60 and lines[-1][1]["done"]
    assert all(isinstance(d["response"], str) for _, d in tokens)  # one line per token, as Ollama sends
    groups = _groups([t for t, _ in tokens])
    # The first token came alone, well before the first interval ran out.
    assert len(groups[0]) == 1 and groups[0][0] - start < INTERVAL_S
    # A handful of sends, one per interval, instead of one per token.
    spread = tokens[-1][0] - tokens[0][0]
    assert 2 <= len(groups) <= spread / INTERVAL_S + 3, [len(g) for g in groups]
    assert max(len(g) for g in groups) >= 5
    # The end is never held: the done line comes with (or right after) the last tokens.
    assert lines[-1][0] - tokens[-1][0] < 0.03
