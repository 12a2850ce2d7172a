"""Streams are not buffered anywhere (nginx included), and one request id is logged by all three hops."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx

from stack.supervisor import Stack
from tests.e2e.conftest import GEMMA

OPTIONS = {"temperature": 0, "repeat_penalty": 1.0}


def _arrivals(response: httpx.Response, is_token: object) -> tuple[float, list[float]]:
    start = time.perf_counter()
    arrivals = [time.perf_counter() for line in response.iter_lines() if line and is_token(line)]  # type: ignore[operator]
    return start, arrivals


def _assert_streamed(start: float, arrivals: list[float], tokens: int) -> None:
    assert len(arrivals) >= tokens * 0.9
    total = arrivals[-1] - start
    # Buffered output would arrive in one lump at the end; streamed output arrives as it is decoded.
    assert arrivals[0] - start < 0.5 * total, (arrivals[0] - start, total)
    # Tokens may travel a few together (HERD_STREAM_INTERVAL_MS: 100 ms on a CPU worker), never in lumps.
    assert len({round(t, 3) for t in arrivals}) >= min(tokens // 2, total / 0.25), (len(set(arrivals)), total)


def test_ndjson_tokens_reach_the_client_as_they_are_decoded(client: httpx.Client) -> None:
    body = {
        "model": GEMMA,
        "prompt": "Write a long story about the sea.",
        "options": {**OPTIONS, "num_predict": 64},
    }
    with client.stream("POST", "/api/generate", json=body) as r:
        start, arrivals = _arrivals(r, lambda line: '"done":false' in line)
    _assert_streamed(start, arrivals, 64)


def test_sse_tokens_reach_the_client_as_they_are_decoded(client: httpx.Client) -> None:
    body = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "stream": True,
        "max_tokens": 64,
        "temperature": 0,
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        start, arrivals = _arrivals(
            r,
            lambda line: (
                line.startswith("data: {")
                and json.loads(line[6:])["choices"][:1] != []
                and json.loads(line[6:])["choices"][0]["delta"].get("content")
            ),
        )
    _assert_streamed(start, arrivals, 64)


def _logged(path: Path, needle: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def test_one_request_id_in_nginx_api_and_worker_logs(client: httpx.Client, stack: Stack) -> None:
    rid = f"e2e-{uuid.uuid4().hex}"
    r = client.post(
        "/api/generate",
        json={"model": "tiny-a", "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        headers={"X-Request-ID": rid},
    )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == rid
    logs = stack.settings.run_dir / "logs"
    assert _logged(logs / "nginx-access.log", f"request_id={rid}")
    assert _logged(logs / "api.log", f"request_id={rid}")
    assert _logged(logs / "worker-w0.log", f"request_id={rid}")
    # Without a client id, nginx makes one, and the same one travels on.
    r = client.post(
        "/api/generate",
        json={"model": "tiny-a", "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
    )
    made = r.headers["X-Request-ID"]
    assert len(made) >= 16 and _logged(logs / "worker-w0.log", f"request_id={made}")
