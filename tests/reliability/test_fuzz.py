"""Hostile input through nginx: schemathesis against the served OpenAPI, then hand-made nasty requests.

The stack here has its own store of tiny models (the fuzzer copies, creates and deletes models) and a
proxy setting that points at a closed loopback port, so a fuzzed pull fails at once instead of dialing out.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from herd.names import ModelName
from herd.store import ModelStore
from stack.supervisor import Stack
from tests.e2e.conftest import start_stack
from tests.support.ports import free_port
from tests.support.raw_http import raw_http
from tests.support.tiny_gguf import CHATML_TEMPLATE, write_tiny_llama

REPO = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Cases per operation and phase in one cycle; schemathesis repeats its cycles until the time budget is spent.
MAX_EXAMPLES = int(os.environ.get("HERD_FUZZ_EXAMPLES", "15"))
# The run's wall-clock budget, so the whole test (stack start included) stays within a minute on 2 cores.
FUZZ_SECONDS = int(os.environ.get("HERD_FUZZ_SECONDS", "20"))
# Longest any fuzzed request may take: a short generation on a tiny model takes a few seconds at worst.
REQUEST_TIMEOUT = 30
SEED = 20240608


def _place_models(root: Path) -> None:
    """The two tiny models every test here uses; placed again when the fuzzer deleted or replaced them
    (it is free to call /api/delete, /api/copy and /api/create on them)."""
    store = ModelStore(root / "models")
    for name, seed, template in (("tiny-a:latest", 1, None), ("tiny-chat:latest", 2, CHATML_TEMPLATE)):
        gguf = root / f"{name.split(':')[0]}.gguf"
        if not gguf.exists():
            write_tiny_llama(gguf, seed=seed, chat_template=template)
        store.import_gguf(ModelName.parse(name), gguf, link=False)


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("fuzz")
    _place_models(root)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a pull is refused at once
    env = {"HTTPS_PROXY": closed, "HTTP_PROXY": closed, "NO_PROXY": ""}
    with start_stack(root / "models", root / "run", env=env) as stack:
        yield stack


@pytest.fixture
def client(fuzz_stack: Stack) -> Iterator[httpx.Client]:
    _place_models(fuzz_stack.settings.models_dir.parent)
    with httpx.Client(base_url=fuzz_stack.settings.base_url, timeout=60, trust_env=False) as c:
        yield c


def error_shape_ok(path: str, body: bytes) -> bool:
    """Whether an error body is Ollama's `{"error": str}`, or OpenAI's `{"error": {...}}` under /v1."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if not isinstance(doc, dict) or "error" not in doc:
        return False
    if path.startswith("/v1/"):
        error = doc["error"]
        return isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error
    return isinstance(doc["error"], str) and bool(doc["error"])


# --- schemathesis -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_only_documented_errors(
    fuzz_stack: Stack, tmp_path: Path
) -> None:
    log = tmp_path / "responses.jsonl"
    schema_url = f"{fuzz_stack.settings.base_url}/openapi.json"
    argv = [
        str(SCHEMATHESIS), "run", schema_url,
        "--checks", "all",
        # Ollama validates more than JSON Schema can say (name grammar, num_ctx against the model's
        # context, a prompt against num_ctx): a schema-valid body may rightly get a 400.
        "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(MAX_EXAMPLES), "--max-time", str(FUZZ_SECONDS),
        # One worker thread: CPython 3.11 before 3.11.8 can fail ast.parse in two threads at once (its AST
        # validator shares a recursion counter: "AST constructor recursion depth mismatch"), and
        # hypothesis parses the source of lambdas while it generates.
        "--seed", str(SEED), "--workers", "1",
        "--request-timeout", str(REQUEST_TIMEOUT), "--no-shrink", "--suppress-health-check", "all",
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.support.fuzz",
        "HERD_FUZZ_LOG": str(log),
        "HERD_FUZZ_MODEL": "tiny-a",
        "NO_COLOR": "1",
    }
    started = time.monotonic()
    proc = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, check=False
    )
    seconds = time.monotonic() - started
    records = [json.loads(line) for line in log.read_text().splitlines()]
    statuses = Counter(r["status"] for r in records if r["status"] is not None)
    print(
        f"\nschemathesis: {len(records)} requests in {seconds:.1f} s, statuses {dict(sorted(statuses.items()))}"
    )
    print("\n".join(proc.stdout.splitlines()[-25:]))
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert len(records) >= 500, "the fuzzer sent too few requests to mean anything"
    assert statuses[200] > 0, "no fuzzed request ever succeeded: the run never reached the models"
    # No request went unanswered: no timeout, no connection reset.
    assert [r for r in records if r["status"] is None] == []
    # Every operation the API serves was fuzzed, whatever routes were added since this test was written.
    served = httpx.get(schema_url, trust_env=False, timeout=30).json()["paths"]
    methods = {"get", "head", "post", "put", "patch", "delete", "options"}
    operations = {(m.upper(), path) for path, item in served.items() for m in item if m in methods}
    assert operations - {(r["method"], r["path"]) for r in records} == set()
    for record in records:
        status, path = record["status"], record["path"]
        if status >= 500:
            # The one upstream failure that is not Herd's: the registry (here, its proxy) refused a pull.
            assert status == 502 and path in ("/api/pull", "/api/push"), record
            assert "proxy" in record["body"] or "registry" in record["body"], record
        if status >= 400 and record["method"] != "HEAD":
            assert error_shape_ok(path, record["body"].encode()), record


# --- hand-made hostile requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("deeply nested array", b"[" * 200_000 + b"]" * 200_000),
        (
            "deeply nested options",
            b'{"model":"tiny-a","prompt":"x","options":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001,
        ),
        ("non-UTF-8 bytes", b'{"model":"tiny-a","prompt":"\xff\xfe\xc0\x80"}'),
        ("truncated JSON", b'{"model":"tiny-a","prompt":"x'),
        ("a JSON string, not an object", b'"tiny-a"'),
        ("NaN temperature", b'{"model":"tiny-a","prompt":"x","options":{"temperature":NaN}}'),
        ("overflowing float", b'{"model":"tiny-a","prompt":"x","options":{"num_ctx":1e999}}'),
    ],
)
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/v1/chat/completions"])
def test_malformed_bodies_get_a_400_in_the_documented_shape(
    client: httpx.Client, path: str, name: str, body: bytes
) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, (name, response.text[:500])
    assert error_shape_ok(path, response.content), response.text[:500]


@pytest.mark.parametrize(
    "options",
    [
        {"num_ctx": 2**63},
        {"num_ctx": -1},
        {"num_ctx": 1e308},
        {"num_predict": 10**30},
        {"temperature": -1e308},
        {"top_p": 1e308},
        {"seed": 2**64},
        {"repeat_last_n": 10**9},
        {"num_batch": 0},
        {"num_keep": -(10**12)},
        {"num_ctx": 1},
        {"temperature": "hot"},
    ],
)
def test_absurd_options_are_refused_naming_the_option(client: httpx.Client, options: dict[str, Any]) -> None:
    body = {"model": "tiny-a", "prompt": "hello", "stream": False, "options": {"num_predict": 2, **options}}
    response = client.post("/api/generate", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert next(iter(options)) in error or "num_ctx" in error, error


@pytest.mark.parametrize(
    "options",
    [{"top_k": 2**40}, {"seed": -1}, {"stop": ["a"] * 5000}, {"num_gpu": 10**9, "use_mmap": "x"}],
)
def test_extreme_but_valid_options_still_generate(client: httpx.Client, options: dict[str, Any]) -> None:
    body = {"model": "tiny-a", "prompt": "hello", "stream": False, "options": {"num_predict": 3, **options}}
    response = client.post("/api/generate", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["done"] is True


def test_lone_surrogates_are_replaced_not_a_500(client: httpx.Client) -> None:
    # Python's json decodes "\ud800" to a string UTF-8 cannot encode; Ollama's decoder makes it U+FFFD.
    raw = b'{"model":"tiny-a","prompt":"\\ud800 hi \\udc00","stream":false,"options":{"num_predict":2}}'
    native = client.post("/api/generate", content=raw)
    assert native.status_code == 200, native.text
    chat = b'{"model":"tiny-chat","messages":[{"role":"user","content":"\\udbff"}],"stream":false,"options":{"num_predict":2}}'
    assert client.post("/api/chat", content=chat).status_code == 200
    v1 = b'{"model":"tiny-a","prompt":"\\ud800","max_tokens":2}'
    response = client.post("/v1/completions", content=v1, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    # A properly paired surrogate is still the character it encodes.
    paired = b'{"model":"tiny-a","prompt":"\\ud83d\\ude00","stream":false,"options":{"num_predict":2}}'
    assert client.post("/api/generate", content=paired).status_code == 200


HOSTILE_NAMES = [
    "..",
    ".",
    "../x",
    "a/../../b",
    "tiny-a/../tiny-a",
    "/",
    "//",
    "/etc/passwd",
    "registry.ollama.ai/../../etc/passwd:latest",
    "x\x00y",
    "tiny-a\x00",
    "a" * 500,
    "tiny-a:" + "b" * 500,
    "tiny-a\r\nX-Injected: 1",
    "%2e%2e%2f",
    "\u202etiny-a",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_model_names_are_refused_everywhere(
    client: httpx.Client, fuzz_stack: Stack, name: str
) -> None:
    before = sorted(
        p.relative_to(fuzz_stack.settings.models_dir) for p in fuzz_stack.settings.models_dir.rglob("*")
    )
    calls = [
        ("POST", "/api/generate", {"model": name, "prompt": "x", "stream": False}),
        ("POST", "/api/chat", {"model": name, "messages": [], "stream": False}),
        ("POST", "/api/embed", {"model": name, "input": "x"}),
        ("POST", "/api/show", {"model": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/copy", {"source": "tiny-a", "destination": name}),
        ("POST", "/api/copy", {"source": name, "destination": "tiny-copy"}),
        ("POST", "/api/create", {"model": name, "from": "tiny-a"}),
        ("POST", "/api/pull", {"model": name, "stream": False}),
        ("POST", "/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": "x"}]}),
        ("POST", "/v1/embeddings", {"model": name, "input": "x"}),
    ]
    for method, path, body in calls:
        response = client.request(method, path, json=body)
        assert response.status_code in (400, 404), (method, path, response.status_code, response.text[:300])
        assert error_shape_ok(path, response.content), response.text[:300]
        assert "x-injected" not in response.headers
    # Percent-encoded whole (dots too, or the client would resolve them as path segments).
    response = client.get("/v1/models/" + quote(name, safe="").replace(".", "%2E"))
    assert response.status_code in (400, 404), response.text[:300]
    # A NUL never reaches the API: nginx refuses the request line itself, in Ollama's shape.
    shape_path = "/api/" if "\x00" in name else "/v1/"
    assert error_shape_ok(shape_path, response.content), response.text[:300]
    # Nothing was created, copied or removed anywhere in (or outside) the store.
    after = sorted(
        p.relative_to(fuzz_stack.settings.models_dir) for p in fuzz_stack.settings.models_dir.rglob("*")
    )
    assert after == before


@pytest.mark.parametrize(
    "raw",
    [
        # A bare CR inside a header value: a request-splitting attempt.
        b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: a\rX-Injected: 1\r\nConnection: close\r\n\r\n",
        # A NUL inside a header value.
        b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Foo: a\x00b\r\nConnection: close\r\n\r\n",
        # An obsolete line folding, which RFC 9112 says to refuse.
        b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: abc\r\n X-Injected: 1\r\nConnection: close\r\n\r\n",
        # A NUL in the path.
        b"GET /v1/models/%00 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        # A raw non-ASCII byte in the path (uvicorn refused it in plain text), a header over nginx's buffers.
        b"GET /api/t\xffgs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
        + b"a" * 20_000
        + b"\r\nConnection: close\r\n\r\n",
        # An unknown method, and TRACE (nginx refuses both itself).
        b"FOO /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"TRACE /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ],
    ids=[
        "bare-cr",
        "nul-header",
        "obs-fold",
        "nul-path",
        "raw-byte-path",
        "huge-header",
        "unknown-method",
        "trace",
    ],
)
def test_malformed_http_is_refused_in_json_without_splitting(fuzz_stack: Stack, raw: bytes) -> None:
    head, body = raw_http(fuzz_stack.settings.base_url, raw)
    status = int(head.split(b" ", 2)[1])
    assert status in (400, 405), head
    assert b"application/json" in head.lower(), head
    assert error_shape_ok("/api/", body), body
    assert b"x-injected" not in head.lower()
    if status == 405:
        assert b"\r\nallow: " in head.lower(), head


def test_crlf_in_a_request_id_never_reaches_a_response_header(client: httpx.Client) -> None:
    # Percent-encoded or not, a request id that is not a plain token is replaced by nginx's own.
    for rid in ("abc%0d%0aX-Injected:%201", "abc\tX-Injected: 1", "a" * 200):
        response = client.get("/api/version", headers={"X-Request-ID": rid})
        assert response.status_code == 200
        assert response.headers["x-request-id"] != rid
        assert "x-injected" not in response.headers
    kept = client.get("/api/version", headers={"X-Request-ID": "plain-token_1.2:3"})
    assert kept.headers["x-request-id"] == "plain-token_1.2:3"


def test_an_oversized_chunked_body_gets_413_json(fuzz_stack: Stack) -> None:
    # No Content-Length: nginx must count a chunked body as it streams it through (proxy_request_buffering
    # is off) and stop it at HERD_MAX_BODY_SIZE, not pass 17 MB on to the API.
    parts = urlsplit(fuzz_stack.settings.base_url)
    assert parts.hostname and parts.port
    chunk = b"x" * (1 << 20)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        try:
            for _ in range(17):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # nginx answered and closed before the whole body went out: what we want
        response = b""
        try:
            while data := sock.recv(65536):
                response += data
        except ConnectionResetError:
            pass
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b'"error": "request body too large' in body
