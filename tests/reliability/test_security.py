"""Security checks on real stacks: keys on every route, what listens where, the TLS offered, no dialing out.

Two stacks: a keyed one on loopback (HERD_API_KEYS_FILE, a proxy setting pointing at a closed loopback
port so that an accidental download shows up as a loopback connect instead of going out), and a LAN one
on 127.0.0.2 serving HTTPS. The bundle's images cannot be run here (no Docker engine): their user is
checked in the Dockerfiles and compose.yaml, beside tests/deploy/test_compose.py and test_images.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from app.main import create_app
from app.settings import ApiSettings
from herd.names import ModelName
from herd.settings import load_settings
from herd.store import ModelStore
from stack.settings import StackSettings
from stack.supervisor import Stack
from stack.tls import tls_paths
from tests.e2e.conftest import start_stack
from tests.support.ports import free_port, free_port_run
from tests.support.security import (
    Sock,
    openssl_cipher_names,
    openssl_handshake,
    outbound,
    sockets,
    stack_processes,
)
from tests.support.tiny_gguf import CHATML_TEMPLATE, write_tiny_llama

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-herd-security-check-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Answered without a key, by design: Ollama's probe and the two health checks (GET and HEAD).
OPEN_PROBES = frozenset({"/", "/health/live", "/health/ready"})
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
LAN_HOST = "127.0.0.2"  # stands in for a LAN address: anything but 127.0.0.1, ::1 and localhost


def tiny_store(root: Path) -> Path:
    store = ModelStore(root / "models")
    store.import_gguf(ModelName.parse("tiny-a:latest"), write_tiny_llama(root / "a.gguf", seed=1))
    store.import_gguf(
        ModelName.parse("tiny-chat:latest"),
        write_tiny_llama(root / "chat.gguf", seed=2, chat_template=CHATML_TEMPLATE),
    )
    return root / "models"


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("security")
    keys = root / "keys.txt"
    keys.write_text(f"{KEY}\n")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"HERD_API_KEYS_FILE": str(keys), "HTTPS_PROXY": closed, "HTTP_PROXY": closed, "NO_PROXY": ""}
    with start_stack(tiny_store(root), root / "run", env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def lan_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("security-lan")
    settings = StackSettings(
        OLLAMA_HOST=f"{LAN_HOST}:{free_port()}",
        HERD_API_PORT=free_port(),
        HERD_REDIS_PORT=free_port(),
        # The workers take the ports right after it: a run of free ones.
        HERD_METRICS_PORT=free_port_run(9),
        HERD_RUN_DIR=root / "run",
        OLLAMA_MODELS=tiny_store(root),
        HERD_API_PROCESSES=1,
    )
    stack = Stack(settings, env={"HERD_HEARTBEAT": "0.5"})
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


# --- every route needs a key ------------------------------------------------------------------------


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the FastAPI app serves, documented or not, walking included routers."""
    app = create_app(load_settings(ApiSettings, redis_url="redis://127.0.0.1:1/0"))  # never connects

    def walk(routes: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's wrapper of an include_router()
                yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
            else:
                for method in route.methods or ():
                    yield method, prefix + route.path

    return set(walk(app.router.routes, ""))


def concrete(path: str) -> str:
    """A requestable path for a route template."""
    path = path.replace("{digest}", "sha256:" + "0" * 64)
    return re.sub(r"\{[^}]+\}", "tiny-a", path)


def refused_in_shape(response: httpx.Response, path: str) -> bool:
    if response.status_code != 401 or response.headers.get("www-authenticate") != "Bearer":
        return False
    if response.request.method == "HEAD":
        return True
    error = response.json()["error"]
    if path == "/v1/messages":  # Anthropic's shape, for Anthropic's clients
        return error["type"] == "authentication_error" and response.json()["type"] == "error"
    if path.startswith("/v1/"):
        return error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    return isinstance(error, str) and error.startswith("unauthorized: ")


def test_no_route_answers_without_a_valid_key(keyed_stack: Stack) -> None:
    served = app_routes()
    with httpx.Client(base_url=keyed_stack.settings.base_url, timeout=30, trust_env=False) as client:
        documented = client.get("/openapi.json", headers=AUTH).json()["paths"]
        routes = served | {(m.upper(), p) for p, ops in documented.items() for m in ops}
        paths = sorted({concrete(p) for _, p in routes})
        assert "/metrics" in paths and "/docs" in paths and len(paths) >= 25, paths
        checked = 0
        for path in paths:
            for method in METHODS:
                for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}):
                    response = client.request(method, path, headers=headers)
                    checked += 1
                    if path == "/metrics":
                        # The public port never proxies /metrics (HERD_METRICS_PUBLIC=0): nginx's 404.
                        assert response.status_code == 404, (method, path, response.text)
                    elif path in OPEN_PROBES and (method, path) in served:
                        assert response.status_code == 200, (method, path, response.text)
                    elif path in OPEN_PROBES:
                        assert response.status_code in (401, 405), (method, path, response.status_code)
                    else:
                        assert refused_in_shape(response, path), (method, path, headers, response.text)
            if path == "/metrics":
                continue
            # CORS preflight is answered by nginx itself, empty: it never reaches the API.
            preflight = client.options(
                path, headers={"Origin": "http://localhost", "Access-Control-Request-Method": "POST"}
            )
            assert preflight.status_code == 204 and preflight.content == b"", path
        # The same requests with the key reach the routes: the 401s above came from the key check.
        for method, template in sorted(served - {("GET", "/metrics"), ("HEAD", "/metrics")}):
            response = client.request(method, concrete(template), headers=AUTH)
            assert response.status_code != 401, (method, template, response.text)
    print(f"\nkeys: {len(paths)} paths ({len(served)} app routes), {checked} keyless/wrong-key requests")


@pytest.mark.parametrize(
    "path",
    [
        "/api/tags/",
        "//api/tags",
        "/API/TAGS",
        "/%61pi/tags",
        "/./api/tags",
        "/health/live/../../api/tags",
        "/health/live/..%2f..%2fapi/tags",
        "/health/live%00/../api/tags",
        "/health/live;/api/tags",
        "/v1/models/../../api/ps",
        "/nothing-here",
    ],
)
def test_path_tricks_reach_nothing_without_a_key(keyed_stack: Stack, path: str) -> None:
    with httpx.Client(base_url=keyed_stack.settings.base_url, timeout=30, trust_env=False) as client:
        response = client.get(path)
    # 401 from the key check, or 400/404 from nginx; never an answer of a route.
    assert response.status_code in (400, 401, 404), (path, response.status_code, response.text)
    assert "models" not in response.text, response.text


def test_the_internal_metrics_listener_serves_only_metrics(keyed_stack: Stack) -> None:
    url = f"http://127.0.0.1:{keyed_stack.settings.metrics_port}"
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        # Prometheus scrapes without a key: this listener is loopback (or the internal network) only.
        scrape = client.get("/metrics")
        assert scrape.status_code == 200, scrape.text
        assert "herd_" in scrape.text
        for path in ("/", "/api/tags", "/health/live", "/metrics/../api/tags", "/v1/models", "/openapi.json"):
            response = client.get(path, headers=AUTH)
            assert response.status_code == 404, (path, response.text)
            assert response.json() == {"error": "only /metrics is served here"}


# --- what listens where -----------------------------------------------------------------------------


def listening(stack: Stack) -> list[tuple[str, Sock]]:
    names = stack_processes(stack)
    return [(names[pid], s) for pid in names for s in sockets(pid) if s.listening]


@pytest.mark.parametrize("which", ["keyed_stack", "lan_stack"])
def test_only_nginx_listens_beyond_loopback_and_redis_only_on_127_0_0_1(
    which: str, request: pytest.FixtureRequest
) -> None:
    stack: Stack = request.getfixturevalue(which)
    found = listening(stack)
    table = sorted({f"{name} {s.local[0]}:{s.local[1]}" for name, s in found})
    print(f"\n{which} listening sockets: {table}")
    public = (stack.settings.listen_host, stack.settings.listen_port)
    assert {name for name, _ in found} >= {"redis", "api", "nginx"}, table
    for name, sock in found:
        if name == "nginx" and (str(sock.local[0]), sock.local[1]) == public:
            continue
        assert str(sock.local[0]) == "127.0.0.1", f"{name} listens on {sock}"
    redis_socks = {(str(s.local[0]), s.local[1]) for name, s in found if name == "redis"}
    assert redis_socks == {("127.0.0.1", stack.settings.redis_port)}, redis_socks


def test_redis_refuses_connections_from_any_other_address(keyed_stack: Stack) -> None:
    port = keyed_stack.settings.redis_port
    client = redis.Redis.from_url(keyed_stack.settings.stack_redis_url, socket_timeout=5)
    try:
        config = {**client.config_get("bind"), **client.config_get("protected-mode")}
    finally:
        client.close()
    assert config == {"bind": "127.0.0.1", "protected-mode": "yes"}, config
    others = [LAN_HOST]
    if shutil.which("hostname"):
        host_ips = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout
        others += [ip for ip in host_ips.split() if ":" not in ip]
    for address in others:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()
    print(
        f"\nredis :{port} refused from {others}; bind {config['bind']}, protected-mode {config['protected-mode']}"
    )


# --- TLS --------------------------------------------------------------------------------------------

# The client's own floor (OpenSSL 3's security level 1+) would refuse to offer TLS 1.0/1.1 and weak
# ciphers, which would make the server look strict: every probe lowers it to 0.
WEAK_OK = "@SECLEVEL=0"


def test_the_probe_detects_a_server_that_accepts_tls_1_0(tmp_path: Path, lan_stack: Stack) -> None:
    # Control: an openssl s_server offering only TLS 1.0 is seen as accepting it.
    cert, key = tls_paths(lan_stack.settings)
    port = free_port()
    argv = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
            "-tls1", "-cipher", f"ALL:{WEAK_OK}", "-quiet"]  # fmt: skip
    server = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        accepted = None
        while accepted is None and time.monotonic() < deadline:  # until s_server listens
            accepted = openssl_handshake("127.0.0.1", port, "-tls1", "-cipher", f"ALL:{WEAK_OK}")
            time.sleep(0.1)
        assert accepted is not None, "the probe cannot see a TLS 1.0 handshake"
        # And the same probe without TLS 1.0 allowed is refused: refusals are told apart from acceptance.
        assert openssl_handshake("127.0.0.1", port, "-tls1_2") is None
    finally:
        server.kill()
        server.wait()


def test_tls_offers_only_tls_1_2_and_1_3_with_forward_secret_aead_ciphers(lan_stack: Stack) -> None:
    host, port = LAN_HOST, lan_stack.settings.listen_port
    protocols = {
        name: openssl_handshake(host, port, flag, "-cipher", f"ALL:{WEAK_OK}")
        for name, flag in (
            ("TLSv1", "-tls1"),
            ("TLSv1.1", "-tls1_1"),
            ("TLSv1.2", "-tls1_2"),
            ("TLSv1.3", "-tls1_3"),
        )
    }
    names = openssl_cipher_names(f"ALL:COMPLEMENTOFALL:{WEAK_OK}")
    tls12 = [n for n in names if not n.startswith("TLS_")]
    tls13 = [n for n in names if n.startswith("TLS_")] + [
        "TLS_AES_128_CCM_SHA256",
        "TLS_AES_128_CCM_8_SHA256",
    ]

    def try12(name: str) -> str | None:
        return openssl_handshake(host, port, "-tls1_2", "-cipher", f"{name}:{WEAK_OK}")

    def try13(name: str) -> str | None:
        return openssl_handshake(host, port, "-tls1_3", "-ciphersuites", name)

    with ThreadPoolExecutor(8) as pool:
        accepted12 = sorted(n for n, got in zip(tls12, pool.map(try12, tls12), strict=True) if got)
        accepted13 = sorted({n for n, got in zip(tls13, pool.map(try13, tls13), strict=True) if got})
    print(f"\nTLS protocols: { {k: bool(v) for k, v in protocols.items()} }")
    print(f"TLS 1.2 ciphers accepted ({len(accepted12)} of {len(tls12)} tried): {accepted12}")
    print(f"TLS 1.3 suites accepted ({len(accepted13)} of {len(set(tls13))} tried): {accepted13}")
    assert protocols["TLSv1"] is None and protocols["TLSv1.1"] is None, protocols
    assert protocols["TLSv1.2"] and protocols["TLSv1.3"], protocols
    assert accepted12, "no TLS 1.2 cipher was accepted"
    for name in accepted12:
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20-POLY1305" in name), name
    assert set(accepted13) <= {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    }
    # The bundle's nginx.conf offers the same as the local stack's template.
    bundle = (REPO / "nginx" / "nginx.conf").read_text()
    template = (REPO / "stack" / "templates" / "nginx.conf.j2").read_text()
    for directive in ("ssl_protocols", "ssl_ciphers"):
        pattern = rf"^\s*{directive} ([^;]+);"
        assert re.findall(pattern, bundle, re.M) == re.findall(pattern, template, re.M), directive


def test_https_answers_carry_hsts_and_an_ecdsa_p256_certificate(lan_stack: Stack) -> None:
    cert = tls_paths(lan_stack.settings)[0]
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(cert)], capture_output=True, text=True, check=True
    ).stdout
    assert "id-ecPublicKey" in text and "prime256v1" in text, text[:2000]
    url = f"https://{LAN_HOST}:{lan_stack.settings.listen_port}"
    with httpx.Client(
        base_url=url, verify=ssl.create_default_context(cafile=str(cert)), trust_env=False, timeout=30
    ) as client:
        for path in ("/", "/api/tags", "/no-such-route"):
            response = client.get(path, headers={"Host": "herd.lan"})
            hsts = response.headers.get("strict-transport-security", "")
            assert (
                re.fullmatch(r"max-age=(\d+).*", hsts) and int(hsts.split("=")[1].split(";")[0]) >= 15552000
            ), (path, hsts)


# --- the bundle runs as a non-root user -------------------------------------------------------------


def final_stage(dockerfile: Path) -> str:
    return re.split(r"^FROM\s", dockerfile.read_text(), flags=re.M)[-1]


@pytest.mark.parametrize("name", ["api", "worker-cpu", "worker-cuda"])
def test_each_image_runs_as_a_numeric_non_root_user(name: str) -> None:
    stage = final_stage(REPO / "docker" / f"{name}.Dockerfile")
    users = re.findall(r"^USER\s+(\S+)", stage, flags=re.M)
    # Numeric, so Kubernetes' runAsNonRoot and Docker's userns can check it without /etc/passwd.
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
    assert re.search(rf"useradd .*--uid {users[-1].split(':')[0]}\b", stage), (
        "the USER is not the created user"
    )
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    assert not re.search(r"\b(su|sudo|gosu|su-exec|setpriv)\b", entrypoint), "the entrypoint changes user"


def test_compose_grants_no_service_root_or_host_privileges() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert str(service.get("user", "")).split(":")[0] not in ("root", "0"), name
        assert not service.get("privileged"), name
        assert not service.get("cap_add"), name
        for key in ("network_mode", "pid", "ipc", "userns_mode"):
            assert service.get(key) != "host", (name, key)
        for volume in service.get("volumes", []):
            assert "docker.sock" not in volume, (name, volume)
    # The API's writable tmpfs belongs to the image's user.
    assert "uid=10001,gid=10001" in compose["services"]["api"]["tmpfs"][0]


# --- nothing dials out ------------------------------------------------------------------------------


class SocketWatch:
    """Samples every socket of a set of processes every 50 ms, keeping the ones that reach off-host."""

    def __init__(self, pids: dict[int, str]) -> None:
        self.pids = pids
        self.samples = 0
        self.seen: set[tuple[str, str, str]] = set()  # (process, proto, remote) of every connected socket
        self.offenders: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.05)

    def sample(self) -> None:
        for pid, name in self.pids.items():
            socks = sockets(pid)
            for s in socks:
                if not s.listening and not s.remote[0].is_unspecified:
                    self.seen.add((name, s.proto, f"{s.remote[0]}:{s.remote[1]}"))
            self.offenders += [f"{name}: {s}" for s in outbound(socks)]
        self.samples += 1

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def test_the_watch_sees_a_socket_aimed_off_host(tmp_path: Path) -> None:
    # Control: a UDP socket connected to TEST-NET-1 (connect sends nothing) held by a process we watch.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.77", 9))
        with SocketWatch({os.getpid(): "test"}) as watch:
            time.sleep(0.12)
    finally:
        probe.close()
    assert any("192.0.2.77" in line for line in watch.offenders), watch.offenders[:5]


def traffic(client: httpx.Client) -> list[int]:
    gen = {"model": "tiny-a", "prompt": "hi", "options": {"num_predict": 8, "temperature": 0}}
    chat = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": 8},
    }
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/api/generate", gen),
        ("POST", "/api/generate", {**gen, "stream": False}),
        ("POST", "/api/chat", chat),
        ("POST", "/api/embed", {"model": "tiny-a", "input": ["one", "two"]}),
        ("POST", "/api/embeddings", {"model": "tiny-a", "prompt": "one"}),
        ("GET", "/api/tags", None),
        ("GET", "/api/ps", None),
        ("POST", "/api/show", {"model": "tiny-a"}),
        ("GET", "/api/version", None),
        ("GET", "/v1/models", None),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        ),
        ("POST", "/v1/completions", {"model": "tiny-a", "prompt": "hi", "max_tokens": 8, "stream": True}),
        ("POST", "/v1/embeddings", {"model": "tiny-a", "input": "one"}),
    ]
    return [client.request(m, p, json=b, headers=AUTH).status_code for m, p, b in calls]


def test_no_stack_process_dials_out_during_traffic_and_a_pull_goes_only_to_the_proxy(
    keyed_stack: Stack,
) -> None:
    pids = stack_processes(keyed_stack)
    started = time.monotonic()
    base_url = keyed_stack.settings.base_url
    with SocketWatch(pids) as watch, httpx.Client(base_url=base_url, timeout=120, trust_env=False) as client:
        with ThreadPoolExecutor(4) as pool:
            statuses = [s for round_ in pool.map(lambda _: traffic(client), range(8)) for s in round_]
        # The one explicit way out: a pull, which goes to HTTPS_PROXY (a closed loopback port here).
        pull = client.post("/api/pull", json={"model": "library/nothing:1", "stream": False}, headers=AUTH)
    elapsed = time.monotonic() - started
    remotes = sorted({remote for _, _, remote in watch.seen})
    print(
        f"\noutbound watch: {len(pids)} processes, {watch.samples} samples over {elapsed:.1f} s, "
        f"{len(statuses)} requests {sorted(set(statuses))}, pull {pull.status_code}; "
        f"remote ends seen: {remotes}"
    )
    assert set(statuses) == {200}, statuses
    assert pull.status_code == 502 and "proxy" in json.dumps(pull.json()).lower(), pull.text
    assert watch.samples >= 5  # every 50 ms while the traffic ran; fewer on a loaded machine
    assert not watch.offenders, watch.offenders[:10]
    assert all(remote.startswith("127.0.0.1:") for remote in remotes), remotes
