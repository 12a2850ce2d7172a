"""The local stack's pieces: OLLAMA_HOST parsing, the rendered nginx and redis configs run by the real
binaries, and ManagedProcess driving real child processes."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from herd.settings import SettingsError, load_settings
from stack.nginx import (
    NginxError,
    check_nginx_conf,
    nginx_argv,
    nginx_dir,
    render_nginx_conf,
    write_nginx_conf,
)
from stack.processes import ManagedProcess, ProcessDied, ProcessNotReady
from stack.redis_auth import acl_lines
from stack.redis_conf import redis_argv, render_redis_conf, write_redis_conf
from stack.settings import StackSettings, parse_ollama_host
from stack.supervisor import Stack, StackError
from tests.support.ports import free_port

# --- helpers ----------------------------------------------------------------------------------------


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs; a zombie waiting for init to reap it counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers=headers or {})
    with opener.open(request, timeout=5) as response:
        return response.status, dict(response.headers), response.read().decode()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# A tiny HTTP server that answers every GET with the X-Request-ID it received, as the API would see it.
ECHO_SERVER = textwrap.dedent(
    """
    import http.server, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = (self.headers.get("X-Request-ID") or "<none>").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


@pytest.fixture
def stack_settings(tmp_path: Path) -> StackSettings:
    return StackSettings(
        ollama_host=f"127.0.0.1:{free_port()}",
        api_port=free_port(),
        redis_port=free_port(),
        run_dir=tmp_path / "run",
        models_dir=tmp_path / "models",
    )


# --- OLLAMA_HOST and the settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ("127.0.0.1", 11434)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        ("example.lan", ("example.lan", 11434)),
        ("10.0.0.5:8080", ("10.0.0.5", 8080)),
        (":9000", ("127.0.0.1", 9000)),
        ("http://localhost:11500", ("localhost", 11500)),
        ("http://box.local", ("box.local", 11434)),
        ("[::1]:5000", ("::1", 5000)),
        ("[::]", ("::", 11434)),
        ("  127.0.0.1:1234  ", ("127.0.0.1", 1234)),
    ],
)
def test_ollama_host_accepts_ollamas_forms(raw: str, expected: tuple[str, int]) -> None:
    assert parse_ollama_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "host:notaport",
        "host:70000",
        "host:0",
        "::1",
        "https://host:443",
        "ftp://host",
        "has space:80",
        "http://host:80/path",
        "user@host:80",
        "[not-v6]:80",
        "-bad-.lan",
    ],
)
def test_ollama_host_rejects_bad_values(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_ollama_host(raw)


def test_bad_ollama_host_fails_at_start_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "host:notaport")
    with pytest.raises(SettingsError) as info:
        load_settings(StackSettings)
    message = str(info.value.code)
    assert "OLLAMA_HOST" in message
    assert "host:notaport" in message


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://0.0.0.0:12000")
    monkeypatch.setenv("HERD_API_PORT", "12001")
    monkeypatch.setenv("HERD_REDIS_PORT", "12002")
    monkeypatch.setenv("HERD_WORKERS", "3")
    monkeypatch.setenv("HERD_API_PROCESSES", "4")
    monkeypatch.setenv("HERD_RUN_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "m"))
    s = load_settings(StackSettings)
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 12000)
    assert (s.api_port, s.redis_port, s.workers, s.api_processes) == (12001, 12002, 3, 4)
    assert s.run_dir == tmp_path / "r"
    assert s.models_dir == tmp_path / "m"
    # The admin URL, with the password made once in the run dir (Redis never runs without one).
    url = s.stack_redis_url
    password = (tmp_path / "r" / "redis" / "password").read_text().strip()
    assert url == f"redis://default:{password}@127.0.0.1:12002/0"
    assert len(password) == 64 and s.stack_redis_url == url
    # A wildcard listen address is reached through loopback.
    assert s.base_url == "http://127.0.0.1:12000"


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OLLAMA_HOST",
        "HERD_API_PORT",
        "HERD_REDIS_PORT",
        "HERD_WORKERS",
        "HERD_API_PROCESSES",
        "HERD_RUN_DIR",
        "OLLAMA_MODELS",
    ):
        monkeypatch.delenv(name, raising=False)
    s = load_settings(StackSettings)
    assert (s.listen_host, s.listen_port, s.api_port, s.redis_port) == ("127.0.0.1", 11434, 11435, 11436)
    assert (s.workers, s.api_processes) == (1, 2)
    assert s.run_dir == Path.cwd() / ".run"
    assert s.models_dir == Path.home() / ".ollama" / "models"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"HERD_WORKERS": "0"}, ["HERD_WORKERS"]),
        ({"HERD_API_PORT": "http"}, ["HERD_API_PORT"]),
        ({"HERD_API_PORT": "11436"}, ["HERD_REDIS_PORT", "HERD_API_PORT"]),
        ({"OLLAMA_HOST": ":11435"}, ["HERD_API_PORT", "OLLAMA_HOST"]),
    ],
)
def test_bad_stack_values_name_the_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: list[str]
) -> None:
    for name in ("OLLAMA_HOST", "HERD_API_PORT", "HERD_REDIS_PORT", "HERD_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings(StackSettings)
    for name in names:
        assert name in str(info.value.code)


@pytest.mark.parametrize("value", ["0,x", "0,0", "GPU", "1;2"])
def test_bad_gpu_lists_name_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HERD_GPUS", value)
    with pytest.raises(SettingsError) as info:
        load_settings(StackSettings)
    assert "HERD_GPUS" in str(info.value.code)


def test_one_worker_per_listed_gpu_pinned_with_cuda_visible_devices(tmp_path: Path) -> None:
    gpus = "1, GPU-8f0c-33ab"
    stack = Stack(StackSettings(HERD_GPUS=gpus, HERD_WORKERS=5, HERD_RUN_DIR=tmp_path))
    assert stack.settings.worker_count == 2  # the GPU list wins over HERD_WORKERS
    assert [stack.worker_env(i)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["1", "GPU-8f0c-33ab"]
    assert len(stack.worker_metrics_urls) == 2
    cpu = Stack(StackSettings(HERD_WORKERS=3, HERD_RUN_DIR=tmp_path / "cpu"))
    assert cpu.settings.worker_count == 3
    assert "CUDA_VISIBLE_DEVICES" not in {k for i in range(3) for k in cpu.worker_env(i)} - set(os.environ)


# --- nginx ------------------------------------------------------------------------------------------


def test_rendered_nginx_conf_has_the_streaming_proxy_settings(stack_settings: StackSettings) -> None:
    conf = render_nginx_conf(stack_settings)
    for directive in (
        "daemon off;",
        f"listen 127.0.0.1:{stack_settings.listen_port};",
        f"server 127.0.0.1:{stack_settings.api_port};",
        "keepalive 32;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_read_timeout 3600s;",
        "proxy_set_header X-Request-ID $herd_request_id;",
        "client_max_body_size 16m;",
    ):
        assert directive in conf
    assert ("user root;" in conf) == (os.geteuid() == 0)
    # Nothing outside the run dir: every absolute path in the file lies under it.
    run_dir = str(stack_settings.run_dir)
    quoted = [part for part in conf.split('"') if part.startswith("/")]
    assert quoted and all(p.startswith(run_dir) for p in quoted)


def test_rendered_nginx_conf_passes_real_nginx_t(stack_settings: StackSettings) -> None:
    path = write_nginx_conf(stack_settings)
    check_nginx_conf(path, nginx_dir(stack_settings))


def test_ipv6_listen_passes_real_nginx_t(tmp_path: Path) -> None:
    settings = StackSettings(ollama_host="[::1]:11999", run_dir=tmp_path / "run6")
    conf = render_nginx_conf(settings)
    assert "listen [::1]:11999;" in conf
    check_nginx_conf(write_nginx_conf(settings), nginx_dir(settings))


def test_check_nginx_conf_reports_nginxs_message(stack_settings: StackSettings) -> None:
    path = write_nginx_conf(stack_settings)
    path.write_text(path.read_text() + "\nno_such_directive on;\n")
    with pytest.raises(NginxError) as info:
        check_nginx_conf(path, nginx_dir(stack_settings))
    assert "no_such_directive" in str(info.value)


@pytest.fixture
def nginx_with_echo_upstream(stack_settings: StackSettings) -> Iterator[StackSettings]:
    """The rendered nginx, really running, in front of a server that echoes X-Request-ID."""
    logs = stack_settings.run_dir / "logs"
    upstream = ManagedProcess(
        "echo", [sys.executable, "-c", ECHO_SERVER, str(stack_settings.api_port)], log_path=logs / "echo.log"
    )
    conf = write_nginx_conf(stack_settings)
    nginx = ManagedProcess("nginx", nginx_argv(conf, nginx_dir(stack_settings)), log_path=logs / "nginx.log")
    try:
        upstream.start()
        upstream.wait_ready(lambda: port_open(stack_settings.api_port), timeout=10)
        nginx.start()
        nginx.wait_ready(lambda: port_open(stack_settings.listen_port), timeout=10)
        yield stack_settings
    finally:
        nginx.stop()
        upstream.stop()


def test_nginx_passes_a_clients_request_id_upstream(nginx_with_echo_upstream: StackSettings) -> None:
    status, headers, body = http_get(
        f"{nginx_with_echo_upstream.base_url}/x", {"X-Request-ID": "client-id.42"}
    )
    assert status == 200
    assert body == "client-id.42"
    assert headers["X-Request-ID"] == "client-id.42"
    # nginx writes the access log line just after the response, so it may lag the client a little.
    access_log = nginx_with_echo_upstream.run_dir / "logs" / "nginx-access.log"
    assert wait_until(lambda: "request_id=client-id.42" in access_log.read_text())


def test_nginx_generates_a_request_id_when_missing_or_unsafe(nginx_with_echo_upstream: StackSettings) -> None:
    for headers in ({}, {"X-Request-ID": "has spaces; and=junk"}):
        status, response_headers, body = http_get(f"{nginx_with_echo_upstream.base_url}/x", headers)
        assert status == 200
        assert len(body) == 32 and all(c in "0123456789abcdef" for c in body)
        assert response_headers["X-Request-ID"] == body


# --- redis ------------------------------------------------------------------------------------------


def test_rendered_redis_conf_content(tmp_path: Path) -> None:
    conf = render_redis_conf(12345, tmp_path / "data dir", users=acl_lines("secret"))
    lines = conf.splitlines()
    assert "secret" not in conf  # only the passwords' hashes
    for line in ("bind 127.0.0.1", "port 12345", "appendonly yes", "protected-mode yes", "daemonize no"):
        assert line in lines
    assert f'dir "{tmp_path / "data dir"}"' in lines
    assert "daemonize yes" not in conf


def test_rendered_redis_conf_runs_a_real_redis_server(stack_settings: StackSettings) -> None:
    conf = write_redis_conf(stack_settings)
    server = ManagedProcess(
        "redis", redis_argv(conf), log_path=stack_settings.run_dir / "logs" / "redis.log", cwd=conf.parent
    )
    client = redis.Redis.from_url(stack_settings.stack_redis_url, socket_timeout=2)

    def pong() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        server.start()
        server.wait_ready(pong, timeout=15)
        client.set("herd:test", "1")
        assert client.get("herd:test") == b"1"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("dir")["dir"] == str(conf.parent / "data")
    finally:
        client.close()
        server.stop()
    assert not server.alive
    assert not port_open(stack_settings.redis_port)


# --- ManagedProcess ---------------------------------------------------------------------------------


def test_wait_ready_fails_fast_with_the_log_when_the_child_exits(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "crasher",
        [sys.executable, "-c", "import sys; print('boom: cannot bind', flush=True); sys.exit(3)"],
        log_path=tmp_path / "crasher.log",
    )
    proc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ProcessDied) as info:
            proc.wait_ready(lambda: False, timeout=60)
    finally:
        proc.stop()
    assert time.monotonic() - started < 10, "wait_ready waited for the timeout instead of failing fast"
    assert "exited with code 3" in str(info.value)
    assert "boom: cannot bind" in info.value.log_tail


def test_wait_ready_times_out_on_a_running_child(tmp_path: Path) -> None:
    with ManagedProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "s.log"
    ) as proc:
        with pytest.raises(ProcessNotReady):
            proc.wait_ready(lambda: False, timeout=0.5)
        assert proc.alive


def test_wait_ready_returns_when_the_check_passes(tmp_path: Path) -> None:
    port = free_port()
    with ManagedProcess(
        "echo", [sys.executable, "-c", ECHO_SERVER, str(port)], log_path=tmp_path / "echo.log"
    ) as proc:
        proc.wait_ready(lambda: port_open(port), timeout=10)
        assert http_get(f"http://127.0.0.1:{port}/")[0] == 200


# The child forks a grandchild that ignores SIGTERM (as a stuck worker might) and reports its pid. The
# child itself either ignores SIGTERM too (only the group SIGKILL after the timeout ends it) or exits on
# it (then the grandchild is left alone in the group, and stop() must still sweep it).
FAMILY = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    if sys.argv[1] == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print(f"grandchild={child.pid}", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize(
    ("leader", "expected_code"), [("stubborn", -signal.SIGKILL), ("polite", -signal.SIGTERM)]
)
def test_stop_kills_the_whole_process_group(tmp_path: Path, leader: str, expected_code: int) -> None:
    proc = ManagedProcess("family", [sys.executable, "-c", FAMILY, leader], log_path=tmp_path / "f.log")
    proc.start()
    pattern = re.compile(r"^grandchild=(\d+)$", re.M)
    try:
        # The log's first line (herd's start banner) quotes the script, so match the printed line only.
        proc.wait_ready(lambda: pattern.search(proc.log_tail()) is not None, timeout=10)
        match = pattern.search(proc.log_tail())
        assert match is not None
        grandchild = int(match.group(1))
        assert not pid_gone(grandchild)
    finally:
        code = proc.stop(timeout=0.5)
    assert code == expected_code
    assert not proc.alive
    assert wait_until(lambda: pid_gone(grandchild)), "the grandchild outlived stop()"
    # Idempotent.
    assert proc.stop() == expected_code


def test_stop_is_graceful_when_sigterm_is_honoured(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "polite", [sys.executable, "-c", "import time; time.sleep(600)"], log_path=tmp_path / "p.log"
    )
    proc.start()
    assert proc.alive
    assert proc.stop(timeout=10) == -signal.SIGTERM
    assert not proc.alive


# Counts the SIGTERMs it gets (one line each) and exits a moment after the first, as a draining worker
# does; a second SIGTERM would tell a Herd worker to cut its drain short.
COUNTS_SIGTERMS = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
got = []
def on_term(signum, frame):
    got.append(time.monotonic())
    with out.open("a") as f:
        f.write("SIGTERM\\n")
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while not got or time.monotonic() - got[0] < 1.0:
    time.sleep(0.02)
"""


def test_terminate_then_stop_sends_the_stop_signal_once(tmp_path: Path) -> None:
    counted = tmp_path / "sigterms"
    proc = ManagedProcess(
        "drainer", [sys.executable, "-c", COUNTS_SIGTERMS, str(counted)], log_path=tmp_path / "d.log"
    )
    proc.start()
    proc.wait_ready(lambda: "ready" in proc.log_tail().splitlines()[-1], timeout=10)
    # What the supervisor's stop does: every worker is sent its stop signal first, then each is waited
    # for in turn, so a later worker's stop() comes after the earlier ones exited. (Two signals sent back
    # to back would reach a Python handler as one.)
    proc.terminate()
    proc.wait_ready(lambda: counted.exists(), timeout=10)
    assert proc.stop(timeout=10) == 0
    assert counted.read_text().splitlines() == ["SIGTERM"]


def test_restart_starts_a_new_process(tmp_path: Path) -> None:
    port = free_port()
    pid_path = tmp_path / "echo.pid"
    proc = ManagedProcess(
        "echo", [sys.executable, "-c", ECHO_SERVER, str(port)], log_path=tmp_path / "e.log", pid_path=pid_path
    )
    try:
        proc.start()
        proc.wait_ready(lambda: port_open(port), timeout=10)
        first = proc.pid
        assert first is not None and pid_path.read_text().strip() == str(first)
        proc.restart()
        proc.wait_ready(lambda: port_open(port), timeout=10)
        assert proc.pid != first
        assert proc.restarts == 1
        assert pid_gone(first) or wait_until(lambda: pid_gone(first))
        assert pid_path.read_text().strip() == str(proc.pid)
        assert http_get(f"http://127.0.0.1:{port}/")[0] == 200
        # The log keeps both runs, each announced by herd.
        assert proc.log_path.read_text().count("--- herd: starting echo") == 2
    finally:
        proc.stop()
    assert not pid_path.exists()


def test_start_reports_a_missing_binary(tmp_path: Path) -> None:
    proc = ManagedProcess("ghost", [str(tmp_path / "no-such-binary")], log_path=tmp_path / "g.log")
    with pytest.raises(Exception, match="cannot start ghost"):
        proc.start()
    assert not proc.alive


# --- the supervisor ---------------------------------------------------------------------------------


def test_supervisor_restarts_a_dead_worker_after_a_backoff(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    stack = Stack(stack_settings)
    worker = ManagedProcess(
        "worker-w0", [sys.executable, "-c", "import time; time.sleep(600)"], log_path=tmp_path / "w.log"
    )
    stack.workers = [worker]
    try:
        worker.start()
        first = worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: not worker.alive)
        stack.check_once()
        assert not worker.alive, "restarted at once, without a backoff"

        def supervised_and_alive() -> bool:
            stack.check_once()
            return worker.alive

        assert wait_until(supervised_and_alive, timeout=5)
        assert worker.pid != first
        assert worker.restarts == 1
    finally:
        worker.stop()


def test_supervisor_stops_when_a_vital_process_dies(stack_settings: StackSettings, tmp_path: Path) -> None:
    stack = Stack(stack_settings)
    api_stub = ManagedProcess(
        "api", [sys.executable, "-c", "print('api went away')"], log_path=tmp_path / "a.log"
    )
    stack.api = api_stub
    api_stub.start()
    assert wait_until(lambda: not api_stub.alive)
    with pytest.raises(StackError, match="cannot run without api") as info:
        stack.check_once()
    assert "api went away" in str(info.value)


def test_supervisor_restarts_a_killed_redis_on_its_data_and_leaves_the_rest_running(
    stack_settings: StackSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = write_redis_conf(stack_settings)
    stack = Stack(stack_settings)
    stack.redis = ManagedProcess("redis", redis_argv(conf), log_path=tmp_path / "redis.log", cwd=conf.parent)
    worker = ManagedProcess(
        "worker-w0", [sys.executable, "-c", "import time; time.sleep(600)"], log_path=tmp_path / "w.log"
    )
    stack.workers = [worker]
    client = redis.Redis.from_url(stack_settings.stack_redis_url, socket_timeout=1)
    try:
        stack.redis.start()
        worker.start()
        stack.redis.wait_ready(lambda: bool(client.ping()))
        client.set("kept", "1")
        time.sleep(1.5)  # appendfsync everysec: the write is on disk once a second has passed
        killed, worker_pid = stack.redis.pid, worker.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        assert wait_until(lambda: not stack.redis.alive if stack.redis else False)
        caplog.set_level("WARNING", logger="stack.supervisor")

        def redis_back() -> bool:
            stack.check_once()  # never a StackError: Redis is restarted, not fatal
            return port_open(stack_settings.redis_port)

        died_at = time.monotonic()
        assert wait_until(redis_back, timeout=10)
        back_after = time.monotonic() - died_at
        assert stack.redis.pid != killed and stack.redis.restarts == 1
        assert 0.9 <= back_after < 4, back_after  # the first restart waits 1 s, then Redis is up at once
        assert client.get("kept") == b"1", "restarted without its append-only file"
        assert worker.pid == worker_pid and worker.alive and worker.restarts == 0
        assert "process=redis" in caplog.text and "was killed by SIGKILL; restarting in 1s" in caplog.text
    finally:
        client.close()
        worker.stop()
        stack.redis.stop()


def test_supervisor_backs_off_a_crash_looping_redis(
    stack_settings: StackSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # redis-server refuses a config it cannot read: every restart dies at once, as a broken Redis would.
    stack = Stack(stack_settings)
    stack.redis = ManagedProcess(
        "redis", redis_argv(tmp_path / "missing.conf"), log_path=tmp_path / "redis.log"
    )
    caplog.set_level("WARNING", logger="stack.supervisor")
    stack.redis.start()
    started = time.monotonic()
    while time.monotonic() - started < 4.5:
        stack.check_once()
        time.sleep(0.05)
    stack.redis.stop()
    delays = [int(d) for d in re.findall(r"process=redis .*; restarting in (\d+)s", caplog.text)]
    # Died at 0 s, restarted at 1 s and 3 s, and the next restart is due at 7 s: not a tight loop.
    assert delays == [1, 2, 4], caplog.text
    assert stack.redis.restarts == 2
    assert "Fatal error, can't open config file" in caplog.text or "missing.conf" in caplog.text


def test_stack_refuses_a_port_in_use_and_leaves_nothing_running(stack_settings: StackSettings) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack_settings.redis_port))
        squatter.listen()
        stack = Stack(stack_settings)
        with pytest.raises(StackError, match="HERD_REDIS_PORT"):
            stack.start()
        assert stack.redis is None and stack.api is None and stack.nginx is None
        # The failed start released the run dir: a second attempt fails on the port again, not the lock.
        with pytest.raises(StackError, match="HERD_REDIS_PORT"):
            stack.start()
    stack.stop()


def test_run_dir_is_locked_against_a_second_stack(stack_settings: StackSettings) -> None:
    stack_settings.run_dir.mkdir(parents=True)
    with open(stack_settings.run_dir / "herd.lock", "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StackError, match="another herd stack"):
            Stack(stack_settings).start()
