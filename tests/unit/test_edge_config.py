"""The edge rules nginx enforces (origins, Host, /metrics, body sizes, logs), checked on the real nginx
rendered from StackSettings, in front of a small upstream that echoes what reached it."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from herd.settings import SettingsError, load_settings
from stack.nginx import check_nginx_conf, nginx_argv, nginx_dir, render_nginx_conf, write_nginx_conf
from stack.processes import ManagedProcess
from stack.settings import DEFAULT_ORIGINS, StackSettings, origin_regex, parse_origins
from stack.tls import fingerprint, make_self_signed, tls_paths
from tests.support.ports import free_port

# Answers every method with what it received; OPTIONS gets 299, so a preflight nginx failed to answer
# itself shows up as a status no test accepts.
ECHO_SERVER = textwrap.dedent(
    """
    import http.server, json, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _echo(self, status=200):
            length = int(self.headers.get("Content-Length") or 0)
            received = len(self.rfile.read(length)) if length else 0
            body = json.dumps({
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_len": received,
            }).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _echo

        def do_OPTIONS(self):
            self._echo(299)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


class EdgeClient(httpx.Client):
    """A client of one running nginx (over HTTPS, trusting its certificate, when it serves TLS)."""

    settings: StackSettings
    logs: Path
    upstream: ManagedProcess


StartEdge = Callable[..., AbstractContextManager[EdgeClient]]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@pytest.fixture
def start_edge(tmp_path: Path) -> StartEdge:
    """Start the rendered nginx (settings overridable) before the echo upstream; yields a client for it."""

    @contextmanager
    def start(host: str = "127.0.0.1", **overrides: Any) -> Iterator[EdgeClient]:
        settings = StackSettings(
            OLLAMA_HOST=f"{host}:{free_port()}",
            HERD_API_PORT=free_port(),
            HERD_REDIS_PORT=free_port(),
            HERD_RUN_DIR=tmp_path / f"run-{free_port()}",
            **overrides,
        )
        logs = settings.run_dir / "logs"
        conf = write_nginx_conf(settings)
        check_nginx_conf(conf, nginx_dir(settings))
        upstream = ManagedProcess(
            "echo", [sys.executable, "-c", ECHO_SERVER, str(settings.api_port)], log_path=logs / "echo.log"
        )
        nginx = ManagedProcess("nginx", nginx_argv(conf, nginx_dir(settings)), log_path=logs / "nginx.log")
        try:
            upstream.start()
            upstream.wait_ready(lambda: _port_open("127.0.0.1", settings.api_port), timeout=10)
            nginx.start()
            nginx.wait_ready(lambda: _port_open(host, settings.listen_port), timeout=10)
            scheme = "https" if settings.tls else "http"
            verify: ssl.SSLContext | bool = False
            if settings.tls:
                verify = ssl.create_default_context(cafile=str(tls_paths(settings)[0]))
            base = f"{scheme}://{host}:{settings.listen_port}"
            with EdgeClient(base_url=base, timeout=10, trust_env=False, verify=verify) as client:
                client.settings, client.logs, client.upstream = settings, logs, upstream
                yield client
        finally:
            nginx.stop()
            upstream.stop()

    return start


@pytest.fixture
def edge(start_edge: StartEdge) -> Iterator[EdgeClient]:
    """nginx with one extra origin pattern from OLLAMA_ORIGINS."""
    with start_edge(OLLAMA_ORIGINS="http://192.168.1.1:*, chrome-extension://*") as client:
        yield client


def assert_json_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert fragment in response.json()["error"]


def raw_exchange(host: str, port: int, data: bytes, *, tls_ca: Path | None = None) -> tuple[int, str, bytes]:
    """Send raw bytes (over TLS when ``tls_ca`` is given) and read to EOF: (status, head, body)."""
    with socket.create_connection((host, port), timeout=10) as raw:
        sock: socket.socket = raw
        if tls_ca is not None:
            sock = ssl.create_default_context(cafile=str(tls_ca)).wrap_socket(raw, server_hostname=host)
        with sock:
            sock.sendall(data)
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin-1").lower(), body


# --- origin patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "regex"),
    [
        ("http://localhost:*", r"^http://localhost:[0-9]+$"),
        ("http://192.168.1.1:*", r"^http://192\.168\.1\.1:[0-9]+$"),
        ("chrome-extension://*", r"^chrome\-extension://[^/]*$"),
        ("https://*.example.com", r"^https://[^/:]*\.example\.com$"),
        ("*", r"^.*$"),
    ],
)
def test_origin_patterns_become_anchored_regexes(pattern: str, regex: str) -> None:
    assert origin_regex(pattern) == regex


def test_default_origins_are_ollamas_list() -> None:
    assert len(DEFAULT_ORIGINS) == 17
    for origin in ("http://localhost", "https://127.0.0.1:*", "http://0.0.0.0:*", "vscode-file://*"):
        assert origin in DEFAULT_ORIGINS
    assert parse_origins(" http://a:* ,, *,") == ["http://a:*", "*"]


@pytest.mark.parametrize(
    "raw", ["localhost", "http://a/path", 'http://a"b', "http://a;b", "http://a b", "http://{a}", "://x"]
)
def test_bad_ollama_origins_fail_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("OLLAMA_ORIGINS", raw)
    with pytest.raises(SettingsError) as info:
        load_settings(StackSettings)
    assert "OLLAMA_ORIGINS" in str(info.value.code)


def test_bad_max_body_size_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_MAX_BODY_SIZE", "10 m;")
    with pytest.raises(SettingsError) as info:
        load_settings(StackSettings)
    assert "HERD_MAX_BODY_SIZE" in str(info.value.code)


# --- origins through the real nginx -----------------------------------------------------------------


ALLOWED_ORIGINS = [
    "http://localhost",
    "http://localhost:3000",
    "https://localhost:8443",
    "http://127.0.0.1:11434",
    "https://127.0.0.1",
    "http://0.0.0.0:8080",
    "app://obsidian.md",
    "file://",
    "tauri://localhost",
    "vscode-webview://1a2b3c",
    "vscode-file://vscode-app",
    "http://192.168.1.1:5173",
    "chrome-extension://abcdefghijklmnop",
]
REFUSED_ORIGINS = [
    "http://localhost.evil.com",
    "http://localhost:3000.evil.com",
    "http://localhost:3000@evil.com",
    "http://127.0.0.1.nip.io",
    "http://evil.com",
    "https://localhost:port",
    "http://localhost/",
    "http://192.168.1.2:5173",
    "http://192.168.1.1",
    "moz-extension://abcdef",
    "null",
]


def test_allowed_origins_get_cors_headers(edge: EdgeClient) -> None:
    for origin in ALLOWED_ORIGINS:
        response = edge.get("/api/version", headers={"Origin": origin})
        assert response.status_code == 200, origin
        assert response.json()["path"] == "/api/version"
        assert response.headers["access-control-allow-origin"] == origin
        assert "Origin" in response.headers.get_list("vary")


def test_refused_origins_get_403_json(edge: EdgeClient) -> None:
    for origin in REFUSED_ORIGINS:
        response = edge.get("/api/version", headers={"Origin": origin})
        assert_json_error(response, 403, "origin not allowed")
        assert "access-control-allow-origin" not in response.headers, origin


def test_requests_without_origin_pass_without_cors_headers(edge: EdgeClient) -> None:
    response = edge.post("/api/generate", json={"model": "x"})
    assert response.status_code == 200
    assert response.json()["method"] == "POST"
    assert "access-control-allow-origin" not in response.headers


def test_preflight_is_answered_by_nginx(edge: EdgeClient) -> None:
    headers = {
        "Origin": "http://localhost:5173",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    response = edge.options("/api/chat", headers=headers)
    assert response.status_code == 204  # the upstream would have said 299
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-request-id"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    refused = edge.options("/api/chat", headers={**headers, "Origin": "http://evil.com"})
    assert_json_error(refused, 403, "origin not allowed")


def test_ollama_origins_star_admits_every_origin(start_edge: StartEdge) -> None:
    with start_edge(OLLAMA_ORIGINS="*") as client:
        for origin in ("http://evil.com", "null"):
            response = client.get("/", headers={"Origin": origin})
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == origin


# --- Host check on a loopback bind ------------------------------------------------------------------


def test_loopback_bind_only_answers_to_loopback_host_names(edge: EdgeClient) -> None:
    for host in ("localhost", "LOCALHOST:11434", "127.0.0.1", "127.0.0.1:80", "[::1]:11434", "0.0.0.0:1"):
        assert edge.get("/", headers={"Host": host}).status_code == 200, host
    for host in ("evil.com", "localhost.evil.com", "127.0.0.1.nip.io", "evil.com:11434", "192.168.1.5"):
        assert_json_error(edge.get("/", headers={"Host": host}), 403, "host not allowed")


def test_http_1_0_without_host_reaches_the_api_with_a_host(edge: EdgeClient) -> None:
    # nginx speaks HTTP/1.1 upstream, where uvicorn refuses a request without Host in plain text.
    port = edge.settings.listen_port
    status, head, body = raw_exchange("127.0.0.1", port, b"GET /api/tags HTTP/1.0\r\n\r\n")
    assert status == 200, head
    assert json.loads(body)["headers"]["host"] == "localhost"
    # A Host the client sent is passed on as it came.
    sent = b"GET /api/tags HTTP/1.0\r\nHost: 127.0.0.1:7\r\n\r\n"
    assert json.loads(raw_exchange("127.0.0.1", port, sent)[2])["headers"]["host"] == "127.0.0.1:7"


@pytest.mark.parametrize(
    ("request_bytes", "status", "fragment"),
    [
        # A raw byte outside printable ASCII in the target: uvicorn refused \xff in plain text once nginx
        # had passed it on; DEL nginx refuses itself.
        (b"GET /api/t\xffgs HTTP/1.1\r\nHost: 127.0.0.1\r\n", 400, "printable ASCII"),
        (b"GET /api/\x7f HTTP/1.1\r\nHost: 127.0.0.1\r\n", 400, "bad request"),
        # nginx's own HTML pages until now.
        (b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n", 400, "too large"),
        (b"GET /api/tags?" + b"a" * 9_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n", 414, "too long"),
        (
            b"POST /api/show HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n",
            501,
            "Transfer-Encoding",
        ),
    ],
    ids=["high-byte-path", "del-path", "huge-header", "huge-uri", "transfer-encoding"],
)
def test_refusals_before_the_api_are_json(
    edge: EdgeClient, request_bytes: bytes, status: int, fragment: str
) -> None:
    request = request_bytes + b"Connection: close\r\n\r\n"
    got, head, body = raw_exchange("127.0.0.1", edge.settings.listen_port, request)
    assert got == status, head
    assert "application/json" in head, head
    assert fragment in json.loads(body)["error"], body


def test_an_unreachable_api_gets_a_json_502(edge: EdgeClient) -> None:
    edge.upstream.stop()
    assert_json_error(edge.get("/api/tags"), 502, "unreachable")
    openai = edge.post("/v1/chat/completions", json={})
    assert openai.status_code == 502 and "unreachable" in openai.json()["error"]["message"]


def test_plain_http_on_the_tls_port_is_refused_in_json_not_redirected(start_edge: StartEdge) -> None:
    # Refused, not redirected: the key has crossed in clear text already, and a redirect would hide it.
    # (The echo upstream answers 200 to everything, so a 400 here is nginx's own.)
    refused = [
        b"POST /api/generate HTTP/1.1\r\nHost: herd.lan\r\nAuthorization: Bearer sk-1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /api/tags HTTP/1.1\r\nHost: herd.lan\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: herd.lan\r\nContent-Length: 0\r\n\r\n",
        b"GET /v1/models HTTP/1.0\r\n\r\n",
    ]
    with start_edge(host="127.0.0.2") as client:
        port = client.settings.listen_port
        for request in refused:
            status, head, body = raw_exchange("127.0.0.2", port, request)
            assert status == 400, head
            assert "location:" not in head and "application/json" in head, head
            error = json.loads(body)["error"]
            message = error["message"] if b" /v1/" in request else error
            assert "use https://" in message, body
        # Only a browser opening / is sent on to HTTPS.
        for method in (b"GET", b"HEAD"):
            request = method + b" / HTTP/1.1\r\nHost: herd.lan:%d\r\nConnection: close\r\n\r\n" % port
            status, head, _ = raw_exchange("127.0.0.2", port, request)
            assert status == 308, head
            assert f"\r\nlocation: https://herd.lan:{port}/\r\n" in head, head
        # The same port serves the API over TLS.
        assert client.get("/api/tags").status_code == 200


def _handshake(host: str, port: int, cafile: Path, **versions: ssl.TLSVersion) -> tuple[str | None, bytes]:
    """A TLS handshake with only the given protocol versions: (the version agreed, the server's DER cert)."""
    context = ssl.create_default_context(cafile=str(cafile))
    # Let the client offer old versions, so a refusal comes from the server, not from this OpenSSL's policy.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    for name, version in versions.items():
        setattr(context, name, version)
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return tls.version(), der


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_a_non_loopback_bind_serves_https_with_a_self_signed_certificate(start_edge: StartEdge) -> None:
    # 127.0.0.2 stands in for a LAN address: only 127.0.0.1, ::1 and localhost count as a loopback bind.
    with start_edge(host="127.0.0.2") as client:
        settings = client.settings
        cert, key = tls_paths(settings)
        assert cert.parent == settings.run_dir / "tls" and key.stat().st_mode & 0o077 == 0
        # Verified against the made certificate, whose names include the bound address; any Host goes.
        response = client.get("/", headers={"Host": "herd.lan"})
        assert response.status_code == 200
        assert response.json()["headers"]["x-forwarded-proto"] == "https"
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert client.get("/metrics").status_code == 404

        port = settings.listen_port
        version, der = _handshake("127.0.0.2", port, cert)
        assert version == "TLSv1.3"
        assert _fingerprint(der) == fingerprint(cert)
        assert _handshake("127.0.0.2", port, cert, maximum_version=ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"
        with pytest.raises(ssl.SSLError):
            _handshake(
                "127.0.0.2",
                port,
                cert,
                minimum_version=ssl.TLSVersion.TLSv1,
                maximum_version=ssl.TLSVersion.TLSv1_1,
            )

        # This machine keeps plain HTTP on 127.0.0.1 at the same port, with the loopback Host check.
        assert settings.base_url == f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=settings.base_url, trust_env=False, timeout=10) as plain:
            local = plain.get("/api/tags")
            assert local.status_code == 200 and "strict-transport-security" not in local.headers
            assert_json_error(plain.get("/", headers={"Host": "herd.lan"}), 403, "host not allowed")


def test_the_self_signed_certificate_is_made_once(tmp_path: Path) -> None:
    settings = StackSettings(OLLAMA_HOST="0.0.0.0:11434", HERD_RUN_DIR=tmp_path / "run")
    write_nginx_conf(settings)
    first = fingerprint(tls_paths(settings)[0])
    check_nginx_conf(write_nginx_conf(settings), nginx_dir(settings))
    assert fingerprint(tls_paths(settings)[0]) == first
    conf = render_nginx_conf(settings)
    assert "listen 0.0.0.0:11434 ssl;" in conf and "listen 127.0.0.1:11434;" in conf
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf


def test_a_configured_certificate_is_served(start_edge: StartEdge, tmp_path: Path) -> None:
    cert, key = tmp_path / "mine.crt", tmp_path / "mine.key"
    make_self_signed(cert, key, StackSettings(OLLAMA_HOST="127.0.0.2"))
    with start_edge(host="127.0.0.2", HERD_TLS_CERT=str(cert), HERD_TLS_KEY=str(key)) as client:
        assert tls_paths(client.settings) == (cert, key)
        assert not (client.settings.run_dir / "tls").exists()
        der = _handshake("127.0.0.2", client.settings.listen_port, cert)[1]
        assert _fingerprint(der) == fingerprint(cert)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"HERD_TLS_CERT": "{cert}"}, ["HERD_TLS_KEY", "HERD_TLS_CERT"]),
        ({"HERD_TLS_KEY": "{cert}"}, ["HERD_TLS_KEY", "HERD_TLS_CERT"]),
        ({"HERD_TLS_CERT": "/no/such.crt", "HERD_TLS_KEY": "{cert}"}, ["HERD_TLS_CERT"]),
    ],
)
def test_bad_tls_settings_name_the_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], names: list[str]
) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    for name in ("HERD_TLS_CERT", "HERD_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(cert=cert))
    with pytest.raises(SettingsError) as info:
        load_settings(StackSettings)
    for name in names:
        assert name in str(info.value.code)


def _fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


# --- /metrics, body sizes, logs ---------------------------------------------------------------------


def test_metrics_are_not_public(edge: EdgeClient) -> None:
    assert_json_error(edge.get("/metrics"), 404, "not found")


def test_metrics_public_when_asked(start_edge: StartEdge) -> None:
    with start_edge(HERD_METRICS_PUBLIC="1") as client:
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.json()["path"] == "/metrics"


def test_oversized_bodies_get_413_json_except_blobs(start_edge: StartEdge) -> None:
    with start_edge(HERD_MAX_BODY_SIZE="1k") as client:
        assert client.post("/api/generate", content=b"x" * 1000).json()["body_len"] == 1000
        response = client.post(
            "/api/generate", content=b"x" * 2048, headers={"Origin": "http://localhost:3000"}
        )
        assert_json_error(response, 413, "too large")
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
        blob = client.post("/api/blobs/sha256-" + "0" * 64, content=b"x" * 200_000)
        assert blob.status_code == 200
        assert blob.json()["body_len"] == 200_000


def test_authorization_is_passed_on_but_never_logged(edge: EdgeClient) -> None:
    secret = "sk-herd-secret-4242"
    response = edge.get(
        "/api/tags", headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "auth-log-1"}
    )
    assert response.json()["headers"]["authorization"] == f"Bearer {secret}"
    access_log = edge.logs / "nginx-access.log"
    deadline = time.monotonic() + 5
    while "request_id=auth-log-1" not in access_log.read_text():
        assert time.monotonic() < deadline, "the request never reached the access log"
        time.sleep(0.05)
    logs = "".join(p.read_text() for p in edge.logs.iterdir())
    assert secret not in logs


def test_rendered_edge_config_passes_real_nginx_t(tmp_path: Path) -> None:
    settings = StackSettings(
        OLLAMA_HOST="[::1]:11999",
        OLLAMA_ORIGINS="*, https://*.example.com, http://10.0.0.*:*",
        HERD_METRICS_PUBLIC="true",
        HERD_RUN_DIR=tmp_path / "run",
    )
    conf = render_nginx_conf(settings)
    assert '"~*^https://[^/:]*\\.example\\.com$" 1;' in conf
    # Only the internal listener's: the public server passes /metrics through to the API.
    assert conf.count("location = /metrics") == 1
    check_nginx_conf(write_nginx_conf(settings), nginx_dir(settings))
