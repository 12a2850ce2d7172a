"""The registry client's SSRF guard against real servers on loopback, and the store worker's start-up cleanup.

Every server here listens on 127.0.0.1; addresses elsewhere (link-local, metadata, the LAN) are judged in
tests/unit/test_registry_client.py on the check itself, so no test sends a packet off this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from herd.names import ModelName
from herd.store import ModelStore
from tests.e2e.conftest import start_stack
from tests.support.ports import free_port
from tests.support.proxy import running_squid
from tests.support.registry import running_registry
from workers.store.registry import RegistryError, RegistrySettings, pull_model
from workers.store.registry.guard import RegistryRefused

SECRET = "s3cret-from-the-upstream-body"


class CountingListener:
    """A TCP listener on 127.0.0.1 that accepts and counts every connection (then closes it)."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counting-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def settled_count(self) -> int:
        """The count once any connection in the backlog has been accepted."""
        time.sleep(0.3)
        return self.accepted

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    counting = CountingListener()
    yield counting
    counting.close()


def _pull(store: ModelStore, name: str, settings: RegistrySettings) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    pull_model(store, ModelName.parse(name), insecure=True, settings=settings, progress=events.append)
    return events


def _refusal(store: ModelStore, name: str, settings: RegistrySettings) -> str:
    with pytest.raises(RegistryRefused) as err:
        _pull(store, name, settings)
    assert err.value.status == 403
    return str(err.value)


def test_a_loopback_registry_is_refused_without_a_connection(
    listener: CountingListener, store: ModelStore
) -> None:
    host = f"127.0.0.1:{listener.port}"
    message = _refusal(store, f"{host}/library/tiny", RegistrySettings())
    assert message.startswith(f"{host}: registry refused: 127.0.0.1 is a loopback address")
    assert f"HERD_REGISTRY_ALLOW={host}" in message
    # A name that resolves to loopback is refused on the address it resolves to.
    by_name = _refusal(store, f"localhost:{listener.port}/library/tiny", RegistrySettings())
    assert "localhost resolves to 127.0.0.1, a loopback address" in by_name
    assert listener.settled_count() == 0
    # No port-scan oracle: a port where nothing listens gets the same answer, port aside.
    closed = free_port()
    assert _refusal(store, f"127.0.0.1:{closed}/library/tiny", RegistrySettings()) == message.replace(
        str(listener.port), str(closed)
    )
    # The counter does see a connection (the assertions above can fail).
    socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()
    assert listener.settled_count() == 1


def test_a_loopback_registry_named_in_the_allow_list_is_pulled(store: ModelStore, gguf: Path) -> None:
    with running_registry("127.0.0.1", None) as registry:
        registry.add_model("library/tiny", "latest", gguf)
        for allow, name in [
            ("127.0.0.1", f"{registry.host}/library/tiny"),
            (f"localhost:{registry.port}", f"localhost:{registry.port}/library/tiny"),
            ("10.0.0.0/8, 127.0.0.0/8", f"{registry.host}/library/tiny"),
        ]:
            events = _pull(store, name, RegistrySettings(registry_allow=allow))
            assert events[-1] == {"status": "success"}, allow
            assert store.get(ModelName.parse(name)).model_path.read_bytes() == gguf.read_bytes()
        # Allowing another port of the host does not allow this one.
        with pytest.raises(RegistryRefused):
            _pull(store, f"{registry.host}/library/tiny", RegistrySettings(registry_allow="127.0.0.1:1"))


class _Hostile(BaseHTTPRequestHandler):
    """Answers every request with an error whose body carries a secret."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if "/library/plain/" in self.path:
            status, body, kind = 500, f"<html>internal page {SECRET}</html>".encode(), "text/html"
        else:
            doc = {"errors": [{"code": "DENIED", "message": "requested access denied", "detail": SECRET}]}
            status, body, kind = 403, json.dumps(doc).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def _hostile_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _banner_server() -> Iterator[int]:
    """Not HTTP: answers any connection with a line of bytes (a Redis, an SSH daemon)."""
    sock = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve() -> None:
        sock.settimeout(0.05)
        while not stopping.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            # A client that gives up on a connection (a TLS attempt before plain HTTP, a retry) resets it;
            # that must not end the server, or the next connection would wait on it for ever.
            with conn, contextlib.suppress(OSError):
                # Read the request first, so that closing does not reset a request still arriving.
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(f"-ERR {SECRET}\r\n".encode())
                conn.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stopping.set()
        thread.join(timeout=5)
        sock.close()


def test_an_upstream_error_body_is_never_reflected(store: ModelStore) -> None:
    allowed = RegistrySettings(registry_allow="127.0.0.1")
    with _hostile_server() as port:
        with pytest.raises(RegistryError) as plain:
            _pull(store, f"127.0.0.1:{port}/library/plain", allowed)
        with pytest.raises(RegistryError) as structured:
            _pull(store, f"127.0.0.1:{port}/library/denied", allowed)
    assert (
        str(plain.value)
        == f"127.0.0.1:{port}: HTTP 500 for manifest for 127.0.0.1:{port}/library/plain:latest"
    )
    assert str(structured.value).endswith("(HTTP 403): DENIED: requested access denied")
    with _banner_server() as port, pytest.raises(RegistryError) as banner:
        _pull(store, f"127.0.0.1:{port}/library/x", allowed)
    assert "not HTTP" in str(banner.value)
    for err in (plain, structured, banner):
        assert SECRET not in str(err.value)


def test_through_a_proxy_a_refused_address_never_reaches_the_proxy(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A denying squid: were the guard to let the request through, squid answers 403 and connects nowhere.
    with running_squid({}, mode="deny") as squid:
        monkeypatch.setenv("HTTPS_PROXY", squid.url)
        metadata = _refusal(store, "169.254.169.254/latest/meta-data", RegistrySettings())
        assert "169.254.169.254 is a cloud metadata address" in metadata
        # A .localhost name goes through the proxy (only "localhost" itself bypasses it) and is refused.
        named = _refusal(store, "models.localhost/library/x", RegistrySettings())
        assert "models.localhost is a loopback name" in named
        time.sleep(0.5)
        assert "CONNECT" not in squid.log()


# --- through the stack: the store worker refuses loopback, and cleans its leftovers at start ------------


def test_the_store_worker_cleans_leftovers_and_refuses_loopback_via_the_api(
    tmp_path: Path, listener: CountingListener
) -> None:
    models = tmp_path / "models"
    blobs = models / "blobs"
    blobs.mkdir(parents=True)
    quantize_left = blobs / "quantize-0123456789abcdef.partial"
    quantize_left.write_bytes(b"\0" * 1024 * 1024)  # what a create killed mid-quantize leaves
    hexd = "ab" * 32
    pull_partial, pull_state = blobs / f"sha256-{hexd}-partial", blobs / f"sha256-{hexd}-partial.parts"
    pull_partial.write_bytes(b"resume me")
    pull_state.write_text("{}")
    old_temp = blobs / f"sha256-{hexd}-partial-{'1' * 16}"  # a killed upload's temp, untouched for 2 h
    old_temp.write_bytes(b"old")
    os.utime(old_temp, (time.time() - 7200, time.time() - 7200))
    fresh_temp = blobs / f"sha256-{hexd}-partial-{'2' * 16}"  # could be an upload in progress
    fresh_temp.write_bytes(b"fresh")
    manifest_dir = models / "manifests" / "registry.ollama.ai" / "library" / "m"
    manifest_dir.mkdir(parents=True)
    manifest_temp = manifest_dir / f".latest.partial-{'3' * 16}"
    manifest_temp.write_text("{}")
    os.utime(manifest_temp, (time.time() - 7200, time.time() - 7200))

    # HERD_REGISTRY_ALLOW empty: the default, whatever the e2e stacks allow for their test registries.
    with (
        start_stack(models, tmp_path / "run", env={"HERD_REGISTRY_ALLOW": ""}) as stack,
        httpx.Client(base_url=stack.settings.base_url, timeout=60, trust_env=False) as client,
    ):
        # /health/ready does not wait for the store worker: its start-up line comes after the cleanup.
        store_worker = stack.store_worker
        assert store_worker is not None
        deadline = time.monotonic() + 30
        while "store worker started" not in store_worker.log_tail(100) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "store worker started" in store_worker.log_tail(100), store_worker.log_tail(100)
        assert not quantize_left.exists()
        assert not old_temp.exists() and not manifest_temp.exists()
        assert pull_partial.read_bytes() == b"resume me" and pull_state.exists() and fresh_temp.exists()

        host = f"127.0.0.1:{listener.port}"
        started = time.monotonic()
        answer = client.post(
            "/api/pull", json={"model": f"{host}/library/x", "insecure": True, "stream": False}
        )
        assert answer.status_code == 403, answer.text
        error = answer.json()["error"]
        assert error.startswith(f"{host}: registry refused") and "HERD_REGISTRY_ALLOW" in error
        with client.stream("POST", "/api/pull", json={"model": f"localhost:{listener.port}/a/b"}) as streamed:
            assert streamed.status_code == 200
            lines = [json.loads(line) for line in streamed.iter_lines() if line]
        assert lines[0] == {"status": "pulling manifest"}
        assert "registry refused" in lines[-1]["error"]
        took = time.monotonic() - started
    assert listener.settled_count() == 0
    print(
        f"\nstore worker start removed a {quantize_left.name} of 1 MiB and 2 stale temps, kept the pull partial;"
        f" 2 loopback pulls through nginx refused (403, in-stream error) in {took * 1000:.0f} ms, 0 connections"
    )
