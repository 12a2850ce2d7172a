"""The edge through the whole real stack: origins, body limits and /metrics at nginx, API keys at the API."""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.routers.meta import OLLAMA_API_VERSION
from stack.settings import StackSettings
from stack.supervisor import Stack
from stack.tls import fingerprint, tls_paths
from tests.e2e.conftest import start_stack
from tests.support.ports import free_port
from tests.support.raw_http import raw_http

KEY = "sk-herd-e2e-first-key"
OTHER_KEY = "sk-herd-e2e-the-second-key"


# --- origins, /metrics and the body limit on the shared stack ---------------------------------------


def test_browser_origins_through_the_stack(client: httpx.Client) -> None:
    allowed = client.get("/api/version", headers={"Origin": "http://localhost:5173"})
    assert allowed.status_code == 200
    assert "version" in allowed.json()
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:5173"
    refused = client.get("/api/version", headers={"Origin": "http://localhost.evil.com"})
    assert refused.status_code == 403
    assert "origin not allowed" in refused.json()["error"]


def test_dns_rebinding_host_is_refused(client: httpx.Client) -> None:
    response = client.get("/api/tags", headers={"Host": "attacker.example:11434"})
    assert response.status_code == 403
    assert "host not allowed" in response.json()["error"]


def test_metrics_are_not_served_publicly(client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


def test_oversized_generate_body_gets_413_json(base_url: str) -> None:
    # Only the headers are sent: nginx judges Content-Length before reading any of the body.
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 17000000\r\nConnection: close\r\n\r\n"
        )
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"application/json" in head.lower()
    assert b'"error": "request body too large' in body


def test_http_1_0_without_host_is_served_and_refused_in_json(base_url: str) -> None:
    # Ollama (Go's net/http) serves HTTP/1.0 without Host; uvicorn refused it in plain text.
    head, body = raw_http(base_url, b"GET /api/version HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body)["version"] == OLLAMA_API_VERSION
    bad = b'{"model": 7}'
    request = b"POST /api/generate HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(bad), bad)
    head, body = raw_http(base_url, request)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"application/json" in head.lower(), head
    assert isinstance(json.loads(body)["error"], str), body


# --- API keys ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# Herd's API keys\n\n  {KEY}  \n")
    run_dir = tmp_path_factory.mktemp("run-keys")
    with start_stack(models_dir, run_dir, env={"HERD_API_KEYS_FILE": str(keys)}) as stack:
        yield stack, keys


@pytest.fixture
def keyed(keyed_stack: tuple[Stack, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed_stack[0].settings.base_url, timeout=60, trust_env=False) as c:
        yield c


def test_requests_need_a_key(keyed: httpx.Client) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": "Basic x"},
    ):
        response = keyed.get("/api/tags", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"].startswith("unauthorized: ")
    posted = keyed.post("/api/generate", json={"model": "tiny-a", "prompt": "hi", "stream": False})
    assert posted.status_code == 401
    tags = keyed.get("/api/tags", headers={"Authorization": f"Bearer {KEY}"})
    assert tags.status_code == 200
    assert any(m["name"] == "tiny-a:latest" for m in tags.json()["models"])


def test_probes_and_preflight_need_no_key(keyed: httpx.Client) -> None:
    assert keyed.get("/").text == "Ollama is running"
    assert keyed.head("/").status_code == 200
    assert keyed.get("/health/live").status_code == 200
    assert keyed.post("/").status_code == 401
    preflight = keyed.options(
        "/api/chat", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204


def test_a_keyed_generation_streams(keyed: httpx.Client) -> None:
    body = {"model": "tiny-a", "prompt": "hi", "options": {"temperature": 0, "seed": 1, "num_predict": 4}}
    with keyed.stream("POST", "/api/generate", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines and '"done":true' in lines[-1].replace(" ", "")


def test_key_file_changes_apply_without_restart(keyed_stack: tuple[Stack, Path], keyed: httpx.Client) -> None:
    stack, keys = keyed_stack
    original = keys.read_text()
    try:
        keys.write_text(f"{OTHER_KEY}  # the new one\n")
        # Every API process re-reads the file when its mtime or size changed, on its next request.
        deadline = time.monotonic() + 10
        while keyed.get("/api/tags", headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code != 200:
            assert time.monotonic() < deadline, "the new key was never accepted"
            time.sleep(0.1)
        assert keyed.get("/api/tags", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401
    finally:
        keys.write_text(original)
    assert keyed.get("/api/tags", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    logs = stack.settings.run_dir / "logs"
    text = "".join(p.read_text(errors="replace") for p in logs.iterdir() if p.is_file())
    assert KEY not in text and OTHER_KEY not in text


# --- TLS on a non-loopback bind ---------------------------------------------------------------------


def test_a_lan_bind_serves_the_api_over_https(
    models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stack.tls")
    # 127.0.0.2 stands in for a LAN address (only 127.0.0.1, ::1 and localhost are a loopback bind).
    settings = StackSettings(
        OLLAMA_HOST=f"127.0.0.2:{free_port()}",
        HERD_API_PORT=free_port(),
        HERD_REDIS_PORT=free_port(),
        HERD_METRICS_PORT=free_port(),
        HERD_RUN_DIR=tmp_path / "run",
        OLLAMA_MODELS=models_dir,
        HERD_API_PROCESSES=1,
    )
    stack = Stack(settings, env={"HERD_HEARTBEAT": "0.5"})
    try:
        stack.start()  # its readiness probe goes through the plain loopback listener
        cert = tls_paths(settings)[0]
        verify = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.2:{settings.listen_port}"
        with httpx.Client(base_url=url, verify=verify, trust_env=False, timeout=60) as client:
            body = {"model": "tiny-a", "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
            response = client.post("/api/generate", json=body, headers={"Host": "herd.lan"})
            assert response.status_code == 200
            assert response.json()["done"] is True
            assert "strict-transport-security" in response.headers
        # Plain HTTP to the LAN address is refused in JSON, never served nor followed; only / is redirected.
        plain_url = f"http://127.0.0.2:{settings.listen_port}"
        with httpx.Client(base_url=plain_url, trust_env=False, timeout=10) as plain:
            refused = plain.post("/api/generate", json=body, headers={"Authorization": "Bearer sk-x"})
            assert refused.status_code == 400 and "location" not in refused.headers
            assert "use https://" in refused.json()["error"]
            page = plain.get("/")
            assert page.status_code == 308
            assert page.headers["location"] == f"https://127.0.0.2:{settings.listen_port}/"
        # The operator can compare what a client is shown with the fingerprint logged at start.
        assert f"sha256 fingerprint {fingerprint(cert)}" in caplog.text
    finally:
        stack.stop()


# --- a real browser ---------------------------------------------------------------------------------

# Calls the API with a custom header (so Chromium sends a CORS preflight first) and writes the outcome
# into the page, which --dump-dom prints.
BROWSER_PAGE = """<!doctype html>
<html><body><pre id="result">pending</pre><script>
fetch("%(api)s/api/version", {headers: {"X-Request-ID": "browser-check-1"}})
  .then(r => r.json().then(j => "ok " + r.status + " " + j.version + " " + r.headers.get("X-Request-ID")))
  .catch(e => "blocked " + e.name)
  .then(text => { document.getElementById("result").textContent = text; });
</script></body></html>
"""


@contextmanager
def page_server(host: str, page: str) -> Iterator[int]:
    """Serve ``page`` at /index.html on ``host`` from a thread; yields the port."""
    body = page.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# Streams a chat reply from /api/chat with fetch() and renders each NDJSON chunk of it.
CHAT_PAGE = """<!doctype html>
<html><body style="font: 16px sans-serif"><h3>Herd chat from %(origin)s</h3>
<pre id="reply" style="white-space: pre-wrap"></pre><pre id="result">pending</pre><script>
(async () => {
  const reply = document.getElementById("reply");
  let chunks = 0;
  try {
    const r = await fetch("%(api)s/api/chat", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: "tiny-chat", messages: [{role: "user", content: "hello"}],
                            options: {temperature: 0, num_predict: 24}})});
    // The NDJSON stream, chunk by chunk (Chromium's virtual time, which --dump-dom needs, stalls a
    // body reader, so the page reads the whole stream and then renders each chunk).
    for (const text of (await r.text()).split("\\n")) {
      if (!text) continue;
      const line = JSON.parse(text);
      if (!line.done) { chunks += 1; reply.textContent += line.message.content; }
    }
    document.getElementById("result").textContent = "streamed " + chunks;
  } catch (e) { document.getElementById("result").textContent = "blocked " + e.name; }
})();
</script></body></html>
"""

ARTIFACTS = Path(
    os.environ.get("HERD_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / ".run" / "test-artifacts")
)


def chromium_screenshot(url: str, profile: Path, out: Path) -> None:
    """A PNG of the page at ``url`` after its scripts ran, kept as a test artifact."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert binary is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
        "--window-size=900,500", f"--screenshot={out}", url,
    ]  # fmt: skip
    subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert out.exists() and out.stat().st_size > 1000, f"no screenshot at {out}"


def chromium_result(url: str, profile: Path) -> str:
    """What the page at ``url`` wrote into #result, run by headless Chromium."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        pytest.fail("chromium is not installed (sudo apt-get install -y chromium)")
    argv = [
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout)
    assert match is not None, f"chromium printed no page (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    return match.group(1)


@pytest.mark.slow
def test_a_browser_page_from_an_allowed_origin_reads_the_api(base_url: str, tmp_path: Path) -> None:
    page = BROWSER_PAGE % {"api": base_url}
    # http://localhost:<port> is one of Ollama's built-in origins; http://127.0.0.2:<port> is none.
    with page_server("127.0.0.1", page) as port:
        allowed = chromium_result(f"http://localhost:{port}/index.html", tmp_path / "profile-a")
    assert allowed.split() == ["ok", "200", OLLAMA_API_VERSION, "browser-check-1"]
    with page_server("127.0.0.2", page) as port:
        refused = chromium_result(f"http://127.0.0.2:{port}/index.html", tmp_path / "profile-b")
    assert refused == "blocked TypeError"


@pytest.mark.slow
def test_a_browser_page_streams_a_chat_only_from_an_allowed_origin(base_url: str, tmp_path: Path) -> None:
    for host, name in (("127.0.0.1", "allowed"), ("127.0.0.2", "refused")):
        page_host = "localhost" if name == "allowed" else host
        page = CHAT_PAGE % {"api": base_url, "origin": page_host}
        with page_server(host, page) as port:
            url = f"http://{page_host}:{port}/index.html"
            result = chromium_result(url, tmp_path / f"profile-{name}")
            chromium_screenshot(url, tmp_path / f"shot-{name}", ARTIFACTS / f"browser-chat-{name}.png")
        if name == "allowed":
            assert result.startswith("streamed ") and int(result.split()[1]) >= 10, result
        else:
            assert result == "blocked TypeError", result
