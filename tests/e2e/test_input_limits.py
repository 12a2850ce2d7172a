"""Client input the model cannot take, through the real stack: a clear answer, never a 5xx.

A num_ctx beyond the model's trained context is capped to it, as Ollama caps it; a `context` holding a
token id the vocabulary lacks is a 400 that names the id. Either way the worker serves the next request.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.supervisor import Stack
from tests.e2e.conftest import GEMMA

GREEDY = {"temperature": 0, "seed": 7, "num_predict": 2}
GEMMA_VOCAB = 262_144  # Gemma 3's vocabulary: ids 0..262143


def _trained_context(client: httpx.Client, model: str) -> int:
    info = client.post("/api/show", json={"model": model}).json()["model_info"]
    arch = info["general.architecture"]
    return int(info[f"{arch}.context_length"])


def _ps_context(client: httpx.Client, model: str) -> int:
    loaded = {m["name"]: m for m in client.get("/api/ps").json()["models"]}
    return int(loaded[model]["context_length"])


def _logged(path: Path, *needles: str, timeout: float = 5.0) -> bool:
    """Whether one line of the log holds every needle (the worker writes it just after answering)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if all(n in line for n in needles):
                return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("model", [GEMMA, "tiny-a:latest"])
def test_num_ctx_beyond_the_trained_context_is_capped_to_it(
    client: httpx.Client, stack: Stack, model: str
) -> None:
    trained = _trained_context(client, model)
    assert 0 < trained < 1_048_576
    body = {"model": model, "prompt": "hi", "stream": False, "options": {**GREEDY, "num_ctx": 1_048_576}}
    try:
        r = client.post("/api/generate", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["done"] is True and r.json()["eval_count"] >= 1
        assert _ps_context(client, model) == trained
        assert _logged(
            stack.settings.run_dir / "logs" / "worker-w0.log",
            "requested context size too large for model",
            "num_ctx=1048576",
            f"n_ctx_train={trained}",
        )
    finally:
        # The capped context is the largest this model takes: give its memory back to the other tests.
        client.post("/api/generate", json={"model": model, "keep_alive": 0})


def test_num_ctx_within_the_trained_context_is_kept(client: httpx.Client) -> None:
    body = {"model": GEMMA, "prompt": "hi", "stream": False, "options": {**GREEDY, "num_ctx": 1000}}
    r = client.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    assert _ps_context(client, GEMMA) == 1000


@pytest.mark.parametrize("bad", [999_999_999, GEMMA_VOCAB, -5])
@pytest.mark.parametrize("stream", [False, True])
def test_a_context_token_outside_the_vocabulary_is_a_400_naming_it(
    client: httpx.Client, bad: int, stream: bool
) -> None:
    body: dict[str, Any] = {
        "model": GEMMA,
        "prompt": "hi",
        "context": [2, bad],
        "stream": stream,
        "options": GREEDY,
    }
    r = client.post("/api/generate", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if bad < 0:
        # The API's schema refuses a negative id before any worker sees it, naming its place.
        assert "'context.1'" in error and "greater than or equal to 0" in error, error
    else:
        assert f"context: token id {bad} is out of range" in error, error
        assert f"(0..{GEMMA_VOCAB - 1})" in error, error
    # The worker is not hurt: the same context with good ids generates.
    ok = client.post("/api/generate", json={**body, "context": [2, GEMMA_VOCAB - 1], "stream": False})
    assert ok.status_code == 200, ok.text
    assert ok.json()["context"][:2] == [2, GEMMA_VOCAB - 1]
