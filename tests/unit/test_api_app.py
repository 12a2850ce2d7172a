"""The API app in process: JSON nesting, the last-resort error answer, the key check first, Redis down.

Redis is a loopback port nothing listens on: connection refused, the real condition of a Redis that is
down. The stack-level versions of these checks, through nginx, are in tests/reliability/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.json_bodies import MAX_JSON_DEPTH, nested_deeper_than
from app.main import create_app
from app.settings import ApiSettings
from herd.settings import load_settings
from tests.support.ports import free_port

KEY = "sk-unit-key"


@pytest.mark.parametrize(
    ("body", "limit", "deeper"),
    [
        (b'{"a": 1}', 1, False),
        (b'{"a": [1]}', 1, True),
        (b'{"a": [1]}', 2, False),
        (b"[" * 65 + b"]" * 65, 64, True),
        (b"[" * 64 + b"]" * 64, 64, False),
        (b"[]" * 10_000, 1, False),
        # Brackets in strings are text, escaped quotes included; keys are strings too.
        (b'{"p": "' + b"[{" * 100 + b'"}', 1, False),
        (b'{"p": "\\"[[[[", "q": "]]]]\\\\", "r": [[1]]}', 3, False),
        (b'{"p": "\\"[[[[", "q": "]]]]\\\\", "r": [[1]]}', 2, True),
        (b'{"' + b"[" * 100 + b'": 1}', 1, False),
        # Malformed: judged by depth all the same, the parser refuses it later.
        (b"[" * 100, 64, True),
        (b"]" * 100 + b"[" * 10, 64, False),
    ],
)
def test_nesting_is_counted_outside_strings(body: bytes, limit: int, deeper: bool) -> None:
    assert nested_deeper_than(body, limit) is deeper


def test_the_nesting_check_of_a_largest_body_takes_about_a_second_at_most() -> None:
    # nginx lets through 16 MB (HERD_MAX_BODY_SIZE); the worst case is brackets only, nested to the limit.
    # Parsing that body (json.loads, which FastAPI does next) takes about three times as long.
    unit = b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b","  # inside one outer array
    body = b"[" + unit * (16_000_000 // len(unit)) + b"[]]"
    started = time.perf_counter()
    assert not nested_deeper_than(body, MAX_JSON_DEPTH)
    elapsed = time.perf_counter() - started
    print(f"\nnesting check of {len(body) / 1e6:.1f} MB of brackets: {elapsed:.2f} s")
    assert elapsed < 5, elapsed


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    settings = load_settings(
        ApiSettings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        api_keys_file=keys,
        retry_after_s=7,
        models_dir=tmp_path / "models",
    )
    app = create_app(settings)

    # A route that fails as a bug would: what no handler maps must still be a JSON 500.
    @app.get("/api/broken")
    @app.get("/v1/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # raise_server_exceptions: an exception that escaped the app would fail the test here.
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def test_an_unhandled_exception_is_a_json_500_in_the_request_s_shape(client: TestClient) -> None:
    native = client.get("/api/broken", headers={"X-Request-ID": "rid-1"})
    assert native.status_code == 500
    assert native.json() == {"error": "internal server error (request id rid-1)"}
    assert native.headers["x-request-id"] == "rid-1"
    v1 = client.get("/v1/broken")
    assert v1.status_code == 500
    assert v1.json()["error"]["type"] == "server_error", v1.text
    assert "a bug" not in v1.text  # the exception stays in the log


def test_the_key_is_checked_before_the_body_is_read(client: TestClient) -> None:
    hostile = b'{"prompt":"\\ud800","x":' + b"[" * 900 + b"]" * 900 + b"}"
    for path in ("/api/generate", "/v1/chat/completions"):
        refused = client.post(path, content=hostile, headers={"Authorization": ""})
        assert refused.status_code == 401, refused.text
        keyed = client.post(path, content=hostile)
        assert keyed.status_code == 400, keyed.text
        assert f"nested deeper than {MAX_JSON_DEPTH} levels" in keyed.text


def test_redis_down_asks_to_retry_after_the_configured_seconds(client: TestClient) -> None:
    response = client.get("/api/ps")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"error": "service unavailable: queue unreachable"}
