"""The compose variant of nginx's config: `nginx -t` passes, and its generated parts match the local stack's."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stack.nginx import find_nginx
from stack.processes import ManagedProcess
from stack.settings import DEFAULT_ORIGINS, origin_regex
from tests.deploy.bundle import COMPOSE_FILE, NGINX_DIR, load_compose
from tests.support.ports import free_port
from tests.unit.test_edge_config import ECHO_SERVER, raw_exchange

SCRIPT = NGINX_DIR / "40-herd-config.sh"
EXTRA_ORIGINS = [
    "http://192.168.1.1:*",
    "chrome-extension://*",
    "https://*.corp.example",
    "http://[fe80::1]:8080",
    "app-*://x",
    "*",
]


def _generate(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run 40-herd-config.sh as the nginx image's entrypoint does, writing into ``out``."""
    return subprocess.run(
        ["sh", str(SCRIPT)],
        env={"PATH": os.environ["PATH"], "HERD_NGINX_GENERATED_DIR": str(out), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _conf_dir(tmp_path: Path, **env: str) -> Path:
    """nginx.conf, its snippets, generated parts and a self-signed pair laid out as in the container."""
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(NGINX_DIR / "nginx.conf", conf / "nginx.conf")
    shutil.copytree(NGINX_DIR / "snippets", conf / "snippets")
    result = _generate(conf / "herd.d", **env)
    assert result.returncode == 0, result.stderr
    (conf / "certs").mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=herd",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(conf / "certs" / "tls.key"), "-out", str(conf / "certs" / "tls.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return conf


def _nginx_t(conf: Path, hosts: Path | None) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on ``conf``; with ``hosts``, in a mount namespace where that file is /etc/hosts."""
    check = f"{find_nginx()} -t -q -c {conf / 'nginx.conf'} -p {conf} -e stderr"
    if hosts is not None:
        # The compose service names resolve only on the compose network; here a private /etc/hosts names them.
        check = f"mount --bind {hosts} /etc/hosts && {check}"
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", check], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def can_unshare() -> None:
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.fail(f"these tests need `unshare --mount` (root): {probe.stderr.decode().strip()}")


def test_nginx_accepts_the_compose_config(tmp_path: Path, can_unshare: None) -> None:
    conf = _conf_dir(tmp_path, OLLAMA_ORIGINS="https://chat.example.lan", HERD_METRICS_PUBLIC="0")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 api\n")
    result = _nginx_t(conf, hosts)
    assert result.returncode == 0, result.stderr


def test_nginx_accepts_the_public_metrics_variant(tmp_path: Path, can_unshare: None) -> None:
    conf = _conf_dir(tmp_path, HERD_METRICS_PUBLIC="true", HERD_MAX_BODY_SIZE="1g")
    assert "herd-proxy.conf" in (conf / "herd.d" / "metrics.conf").read_text()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 api\n")
    result = _nginx_t(conf, hosts)
    assert result.returncode == 0, result.stderr


def test_nginx_check_fails_when_the_api_name_does_not_resolve(tmp_path: Path, can_unshare: None) -> None:
    """The upstream is the compose service `api`: the check above passes only because the name resolves."""
    conf = _conf_dir(tmp_path)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    result = _nginx_t(conf, hosts)
    assert result.returncode != 0
    assert 'host not found in upstream "api:11435"' in result.stderr


def test_origin_regexes_are_the_local_stacks(tmp_path: Path) -> None:
    result = _generate(tmp_path, OLLAMA_ORIGINS=", ".join(EXTRA_ORIGINS))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "origins.conf").read_text().splitlines()
    assert all(re.fullmatch(r'"~\*\^.*\$" 1;', line) for line in lines), lines
    generated = {line[3:-4] for line in lines}
    assert generated == {origin_regex(pattern) for pattern in [*DEFAULT_ORIGINS, *EXTRA_ORIGINS]}


def test_default_origins_only_without_ollama_origins(tmp_path: Path) -> None:
    assert _generate(tmp_path).returncode == 0
    generated = {line[3:-4] for line in (tmp_path / "origins.conf").read_text().splitlines()}
    assert generated == {origin_regex(pattern) for pattern in DEFAULT_ORIGINS}
    assert (tmp_path / "limits.conf").read_text() == "client_max_body_size 16m;\n"
    assert "return 404" in (tmp_path / "metrics.conf").read_text()
    assert "the limit is 16m" in (tmp_path / "too-large.conf").read_text()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OLLAMA_ORIGINS", "http://ok.example,not an origin"),
        ("OLLAMA_ORIGINS", 'http://x"; return 200;'),
        ("HERD_MAX_BODY_SIZE", "16 m"),
        ("HERD_METRICS_PUBLIC", "maybe"),
    ],
)
def test_a_bad_value_stops_the_container_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = _generate(tmp_path, **{variable: value})
    assert result.returncode != 0
    assert variable in result.stderr


def test_the_script_is_executable_and_mounted_where_the_image_runs_it() -> None:
    # The nginx image skips a non-executable /docker-entrypoint.d script without failing.
    assert os.access(SCRIPT, os.X_OK)
    volumes = load_compose()["services"]["nginx"]["volumes"]
    assert "./nginx/40-herd-config.sh:/docker-entrypoint.d/40-herd-config.sh:ro" in volumes
    assert "./nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in volumes
    assert "./nginx/snippets:/etc/nginx/snippets:ro" in volumes
    assert COMPOSE_FILE.is_file()


def test_edge_policies_carried_over_from_the_local_template() -> None:
    conf = (NGINX_DIR / "nginx.conf").read_text()
    proxy = (NGINX_DIR / "snippets" / "herd-proxy.conf").read_text()
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert "error_page 413 @too_large;" in conf
    assert "error_page 497 @plain_http;" in conf
    assert "error_page 400 /.herd-bad-request;" in conf and "error_page 405 @not_allowed;" in conf
    assert "$herd_origin_ok = 0" in conf
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "X-Request-ID $herd_request_id",
    ):
        assert directive in proxy
    # The listener Prometheus and the healthcheck use is not the public one.
    assert "listen 11437;" in conf and "listen 443 ssl;" in conf


# --- the compose nginx, running -----------------------------------------------------------------------


@contextmanager
def compose_edge(tmp_path: Path) -> Iterator[tuple[int, Path, ManagedProcess]]:
    """The compose nginx.conf run by the real nginx before an echo upstream: (TLS port, CA, upstream).

    Only what ties it to the compose network is rewritten: its listen ports (443, 11437) become free
    loopback ones, the `api` upstream the echo server's port, and the pid file one under ``tmp_path``.
    """
    conf = _conf_dir(tmp_path)
    tls_port, internal_port, api_port = free_port(), free_port(), free_port()
    text = (conf / "nginx.conf").read_text()
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;"),
        ("listen 11437;", f"listen 127.0.0.1:{internal_port};"),
        ("server api:11435;", f"server 127.0.0.1:{api_port};"),
        ("pid /tmp/nginx.pid;", f"pid {tmp_path / 'nginx.pid'};"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (conf / "nginx.conf").write_text(text)
    argv = [
        find_nginx(),
        "-c",
        str(conf / "nginx.conf"),
        "-p",
        str(conf),
        "-e",
        "stderr",
        "-g",
        "daemon off;",
    ]
    upstream = ManagedProcess(
        "echo", [sys.executable, "-c", ECHO_SERVER, str(api_port)], log_path=tmp_path / "echo.log"
    )
    nginx = ManagedProcess("nginx", argv, log_path=tmp_path / "nginx.log")
    try:
        upstream.start()
        upstream.wait_ready(lambda: _port_open(api_port), timeout=10)
        nginx.start()
        nginx.wait_ready(lambda: _port_open(tls_port), timeout=10)
        yield tls_port, conf / "certs" / "tls.crt", upstream
    finally:
        nginx.stop()
        upstream.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_compose_edge_refuses_plain_http_and_answers_its_own_errors_in_json(tmp_path: Path) -> None:
    with compose_edge(tmp_path) as (port, ca, upstream):
        # Plain HTTP on the TLS port: a 400 that says to use https, never a redirect, but for GET /.
        post = (
            b"POST /api/chat HTTP/1.1\r\nHost: herd.lan\r\nAuthorization: Bearer sk-1\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        status, head, body = raw_exchange("127.0.0.1", port, post)
        assert status == 400 and "location:" not in head, head
        assert "use https://" in json.loads(body)["error"]
        status, head, body = raw_exchange("127.0.0.1", port, b"GET /v1/models HTTP/1.0\r\n\r\n")
        assert status == 400 and "use https://" in json.loads(body)["error"]["message"], body
        status, head, _ = raw_exchange("127.0.0.1", port, b"GET / HTTP/1.1\r\nHost: herd.lan\r\n\r\n")
        assert status == 308 and f"\r\nlocation: https://herd.lan:{port}/\r\n" in head, head

        # Over TLS: HTTP/1.0 without Host reaches the API with one; nginx's own refusals are JSON.
        status, _, body = raw_exchange("127.0.0.1", port, b"GET /api/tags HTTP/1.0\r\n\r\n", tls_ca=ca)
        assert status == 200 and json.loads(body)["headers"]["host"] == "localhost", body
        close = b"Connection: close\r\n\r\n"
        for request, expected in (
            (b"GET /api/tags HTTP/1.1\r\n" + close, 400),
            (b"TRACE /api/tags HTTP/1.1\r\nHost: a\r\n" + close, 405),
            (b"FOO /api/tags HTTP/1.1\r\nHost: a\r\n" + close, 405),
            (b"GET /api/t\xffgs HTTP/1.1\r\nHost: a\r\n" + close, 400),
            (b"GET /?" + b"a" * 9_000 + b" HTTP/1.1\r\nHost: a\r\n" + close, 414),
        ):
            status, head, body = raw_exchange("127.0.0.1", port, request, tls_ca=ca)
            assert status == expected and "application/json" in head, head
            assert isinstance(json.loads(body)["error"], str), body
        upstream.stop()
        status, head, body = raw_exchange(
            "127.0.0.1", port, b"GET /api/tags HTTP/1.1\r\nHost: a\r\n" + close, tls_ca=ca
        )
        assert status == 502 and "unreachable" in json.loads(body)["error"], head
