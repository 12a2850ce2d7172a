"""Context shifting through the real stack: a generation longer than num_ctx (Ollama's `shift`)."""

from __future__ import annotations

from typing import Any

import httpx

GREEDY = {"temperature": 0, "seed": 7, "repeat_penalty": 1.0}


def generate(client: httpx.Client, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "tiny-a",
        "prompt": "Once upon a time",
        "stream": False,
        "options": {**GREEDY, "num_ctx": 64, "num_predict": 150},
        **extra,
    }
    response = client.post("/api/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_generation_past_num_ctx_shifts_by_default(client: httpx.Client) -> None:
    answer = generate(client)
    assert answer["done_reason"] == "length"
    assert answer["eval_count"] == 150 > 64
    # `context` keeps every token, including those the shift dropped from the KV cache.
    assert len(answer["context"]) == answer["prompt_eval_count"] + 150


def test_shift_false_stops_at_num_ctx(client: httpx.Client) -> None:
    answer = generate(client, shift=False)
    assert answer["done_reason"] == "length"
    assert answer["prompt_eval_count"] + answer["eval_count"] == 64


def test_chat_shifts_too_and_shift_false_stops_at_num_ctx(client: httpx.Client) -> None:
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "Once upon a time"}],
        "stream": False,
        "options": {**GREEDY, "num_ctx": 64, "num_predict": 150},
    }
    stopped = client.post("/api/chat", json={**body, "shift": False}, timeout=120).json()
    assert stopped["done_reason"] == "length"
    assert stopped["prompt_eval_count"] + stopped["eval_count"] == 64
    shifted = client.post("/api/chat", json=body, timeout=120).json()
    assert shifted["done_reason"] == "length" and shifted["eval_count"] == 150


def test_shift_must_be_a_bool(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "tiny-a", "prompt": "hi", "shift": "yes"})
    assert response.status_code == 400
