"""Hostile bodies and numbers through nginx, on a stack with API keys: what the audit of issue 15 sent.

A huge keep_alive used to kill the worker's heartbeat (a time_t overflow) and wedge it for good; a deep
body with a lone surrogate got a plain-text 500 before the key check, and nginx then sent the next
requests down the connection uvicorn had closed (502s for anyone); a deep `format` schema got a 500 from
the job serializer. Each case is followed by requests that must all succeed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.json_bodies import MAX_JSON_DEPTH, nested_deeper_than
from stack.supervisor import Stack
from tests.e2e.conftest import GEMMA, start_stack
from tests.reliability.conftest import wait_heartbeats

KEY = "sk-herd-hostile-bodies"
AUTH = {"Authorization": f"Bearer {KEY}"}
TINY = {
    "model": "tiny-a",
    "prompt": "hello",
    "stream": False,
    "options": {"num_predict": 2, "temperature": 0},
}


@pytest.fixture(scope="module")
def keyed_stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hostile")
    keys = root / "keys.txt"
    keys.write_text(f"{KEY}\n")
    with start_stack(models_dir, root / "run", env={"HERD_API_KEYS_FILE": str(keys)}) as stack:
        yield stack


@pytest.fixture
def client(keyed_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed_stack.settings.base_url, timeout=120, trust_env=False) as c:
        yield c


def assert_healthy(client: httpx.Client, follow_ups: int = 10) -> None:
    """The stack still answers: ready, and every one of ``follow_ups`` generations answers 200."""
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    statuses = [client.post("/api/generate", json=TINY, headers=AUTH).status_code for _ in range(follow_ups)]
    assert statuses == [200] * follow_ups, statuses


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def schema(levels: int) -> dict[str, Any]:
    """An object schema nesting ``levels`` objects (two JSON levels each)."""
    node: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        node = {"type": "object", "properties": {"a": node}, "required": ["a"]}
    return node


def test_a_huge_keep_alive_keeps_the_model_for_ever_and_the_worker_healthy(
    keyed_stack: Stack, client: httpx.Client
) -> None:
    # The audit's request, which answered 200 and killed the worker's heartbeat thread for good; bounded
    # in length here, as Gemma's sampled answer to "hi" ran for minutes on a loaded machine.
    body = (
        b'{"model":"gemma3:270m","prompt":"hi","stream":false,"keep_alive":1e15,"options":{"num_predict":8}}'
    )
    response = client.post("/api/generate", content=body, headers=AUTH)
    assert response.status_code == 200, response.text
    models = {m["name"]: m for m in client.get("/api/ps", headers=AUTH).json()["models"]}
    expires = dt.datetime.fromisoformat(models[GEMMA]["expires_at"].replace("Z", "+00:00"))
    years = (expires - dt.datetime.now(dt.UTC)).days / 365
    assert years > 50, models[GEMMA]["expires_at"]  # kept for ever, shown as Herd shows a negative one
    # Three heartbeats later (HERD_HEARTBEAT=0.5; its state expires after three missed) the worker is still
    # advertised and takes jobs.
    wait_heartbeats(keyed_stack, 3)
    assert_healthy(client)
    # Other spellings past Go's longest duration saturate the same way; none reaches the worker raw.
    for keep_alive in ("99999999999999h", 10**400, 9.3e9):
        raw = json.dumps({"model": GEMMA, "prompt": "", "keep_alive": keep_alive, "stream": False})
        response = client.post("/api/generate", content=raw, headers=AUTH)
        assert response.status_code == 200, (keep_alive, response.text)
    wait_heartbeats(keyed_stack, 3)
    assert_healthy(client, follow_ups=2)
    client.post("/api/generate", json={"model": GEMMA, "keep_alive": 0}, headers=AUTH)  # unloads it


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/v1/chat/completions"])
def test_a_deep_body_with_a_lone_surrogate_is_401_without_a_key_then_400_naming_the_depth(
    client: httpx.Client, path: str
) -> None:
    hostile = '{"model":"tiny-a","prompt":"\\ud800","messages":' + nested(900, '"\\ud800"') + "}"
    headers = {"Content-Type": "application/json"}
    refused = client.post(path, content=hostile, headers=headers)
    assert refused.status_code == 401, refused.text
    assert refused.headers["content-type"] == "application/json"
    keyed = client.post(path, content=hostile, headers={**headers, **AUTH})
    assert keyed.status_code == 400, keyed.text
    error = keyed.json()["error"]
    message = error["message"] if path.startswith("/v1/") else error
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message, error
    if path.startswith("/v1/"):
        assert error["type"] == "invalid_request_error" and error["code"] == "json_too_deep", error
    # The audit saw 502 for 7 of the next 10 requests, from anyone: nginx reused a closed connection.
    assert_healthy(client)


def test_a_format_schema_too_deep_is_a_400_and_one_at_the_limit_runs(client: httpx.Client) -> None:
    deep = {**TINY, "format": schema(150)}  # 300 JSON levels: a 500 from the job serializer before
    response = client.post("/api/generate", json=deep, headers=AUTH)
    assert response.status_code == 400, response.text
    assert str(MAX_JSON_DEPTH) in response.json()["error"]
    v1 = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema(150)}},
    }
    response = client.post("/v1/chat/completions", json=v1, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "json_too_deep"
    # The deepest body accepted reaches the worker, which turns the schema into a grammar and runs it.
    levels = (MAX_JSON_DEPTH - 2) // 2  # the body takes one level, each schema level two
    fits = {"model": GEMMA, "prompt": "hi", "stream": False, "format": schema(levels)}
    fits["options"] = {"num_predict": 4, "temperature": 0}
    raw = json.dumps(fits).encode()
    assert not nested_deeper_than(raw, MAX_JSON_DEPTH) and nested_deeper_than(raw, MAX_JSON_DEPTH - 1)
    response = client.post("/api/generate", content=raw, headers=AUTH)
    assert response.status_code == 200, response.text
    assert_healthy(client)


def test_the_bracket_count_ignores_strings(client: httpx.Client) -> None:
    # Brackets inside strings are text, not nesting: a prompt full of them is an ordinary request.
    body = {**TINY, "prompt": "[{" * 40}  # more brackets than the limit, so they are really counted
    response = client.post("/api/generate", json=body, headers=AUTH)
    assert response.status_code == 200, response.text


def test_v1_bools_are_strict_and_null_means_absent(client: httpx.Client) -> None:
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for field, value in (("stream", "yes"), ("stream", 1), ("logprobs", "true")):
        response = client.post("/v1/chat/completions", json={**body, field: value}, headers=AUTH)
        assert response.status_code == 400, (field, value, response.text)
        error = response.json()["error"]
        assert error["param"] == field and error["type"] == "invalid_request_error", error
    # OpenAI's optional fields are nullable: null is the default (here, not streamed).
    nulls = {**body, "stream": None, "temperature": None, "stop": None, "stream_options": None}
    response = client.post("/v1/chat/completions", json=nulls, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
