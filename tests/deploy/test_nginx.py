"""The compose variant of nginx's config: `nginx -t` passes, and its generated parts match the local stack's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.stack.nginx import find_nginx
from app.stack.settings import DEFAULT_ORIGINS, origin_regex
from tests.deploy.bundle import COMPOSE_FILE, NGINX_DIR, load_compose

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
    assert "error_page 497 =308 https://" in conf
    assert "$herd_origin_ok = 0" in conf
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "X-Request-ID $herd_request_id",
    ):
        assert directive in proxy
    # The listener Prometheus and the healthcheck use is not the public one.
    assert "listen 11437;" in conf and "listen 443 ssl;" in conf
