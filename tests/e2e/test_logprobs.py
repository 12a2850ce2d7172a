"""Log probabilities: native `logprobs`/`top_logprobs`, /v1 chat `logprobs`, legacy completions `logprobs`."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import openai
import pytest

MODEL = "tiny-a"
GREEDY = {"temperature": 0, "seed": 3, "num_predict": 12}


def _check_entries(entries: list[dict[str, Any]], top: int) -> None:
    """Each entry: a token, its log probability, its bytes, and (greedy) it is the likeliest of its top."""
    assert entries
    for e in entries:
        assert e["logprob"] <= 0.0
        assert bytes(e["bytes"]).decode("utf-8", errors="replace") == e["token"]
        alternatives = e.get("top_logprobs", [])
        assert len(alternatives) == top
        if top:
            values = [a["logprob"] for a in alternatives]
            assert values == sorted(values, reverse=True)
            assert alternatives[0]["token"] == e["token"]  # greedy picks the likeliest
            assert math.isclose(alternatives[0]["logprob"], e["logprob"])
            assert sum(math.exp(v) for v in values) <= 1.0 + 1e-4


def test_native_generate_logprobs_cover_every_token(client: httpx.Client) -> None:
    r = client.post(
        "/api/generate",
        json={
            "model": MODEL,
            "prompt": "abc",
            "stream": False,
            "options": GREEDY,
            "logprobs": True,
            "top_logprobs": 3,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    _check_entries(body["logprobs"], 3)
    assert len(body["logprobs"]) == body["eval_count"]
    assert "".join(e["token"] for e in body["logprobs"]) == body["response"]


def test_native_stream_carries_logprobs_with_its_text(client: httpx.Client) -> None:
    with client.stream(
        "POST",
        "/api/chat",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "abc"}],
            "options": GREEDY,
            "logprobs": True,
        },
    ) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    entries = [e for line in lines for e in line.get("logprobs", [])]
    _check_entries(entries, 0)
    text = "".join(line["message"]["content"] for line in lines)
    assert "".join(e["token"] for e in entries) == text


def test_native_without_logprobs_sends_none(client: httpx.Client) -> None:
    r = client.post(
        "/api/generate", json={"model": MODEL, "prompt": "abc", "stream": False, "options": GREEDY}
    )
    assert "logprobs" not in r.json()


@pytest.mark.parametrize("top", [-1, 21])
def test_native_top_logprobs_out_of_range_is_refused(client: httpx.Client, top: int) -> None:
    r = client.post(
        "/api/generate", json={"model": MODEL, "prompt": "a", "logprobs": True, "top_logprobs": top}
    )
    assert r.status_code == 400
    assert "top_logprobs" in r.json()["error"]


def test_v1_chat_logprobs_with_the_official_client(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "abc"}],
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=2,
    )
    logprobs = r.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    _check_entries([e.model_dump() for e in logprobs.content], 2)
    assert "".join(e.token for e in logprobs.content) == r.choices[0].message.content

    streamed = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "abc"}],
        temperature=0,
        max_tokens=8,
        logprobs=True,
        stream=True,
    )
    entries = [
        e
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert [e.token for e in entries] == [e.token for e in logprobs.content]


def test_v1_completions_legacy_logprobs(client: httpx.Client) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "abc", "max_tokens": 6, "temperature": 0, "logprobs": 2},
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert all(
        len(top) <= 2 and tok in top for tok, top in zip(lp["tokens"], lp["top_logprobs"], strict=True)
    )
    assert lp["text_offset"][0] == 0


def test_v1_top_logprobs_needs_logprobs(client: httpx.Client) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "a"}], "top_logprobs": 2},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "top_logprobs"
