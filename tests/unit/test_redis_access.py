"""The stack's Redis as other hosts see it: a password always, one ACL user per process kind, TLS off loopback.

Real redis-server processes run the configs `herd up` renders (stack/redis_conf.py); real worker processes
are pointed at them with wrong credentials or the wrong transport and must refuse to start, saying why.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from herd.redis_connect import (
    RedisAccessError,
    async_client,
    build_url,
    check_access,
    parse_redis_url,
    redact,
    sync_client,
)
from herd.settings import CommonSettings, SettingsError, load_settings
from stack.processes import ManagedProcess
from stack.redis_auth import API_USER, WORKER_USER
from stack.redis_conf import redis_argv, write_redis_conf
from stack.settings import StackSettings
from stack.supervisor import Stack
from stack.tls import redis_tls_paths
from tests.support.ports import free_port
from tests.support.redis_server import running_redis

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _serve(settings: StackSettings) -> Iterator[StackSettings]:
    conf = write_redis_conf(settings)
    server = ManagedProcess(
        "redis", redis_argv(conf), log_path=settings.run_dir / "redis.log", cwd=conf.parent
    )
    client = sync_client(_client_settings(settings, settings.stack_redis_url), socket_timeout=2)

    def pong() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        server.start()
        server.wait_ready(pong, timeout=15)
        yield settings
    finally:
        client.close()
        server.stop()


def _client_settings(stack: StackSettings, url: str) -> CommonSettings:
    ca = redis_tls_paths(stack)[0] if stack.redis_tls_on else None
    return CommonSettings(redis_url=url, redis_ca=ca)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackSettings]:
    """The stack's Redis on loopback: plain TCP, ACL users."""
    run = tmp_path_factory.mktemp("plain")
    yield from _serve(StackSettings(redis_port=free_port(), run_dir=run, models_dir=run / "m"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackSettings]:
    """The stack's Redis with TLS on (as with a LAN HERD_REDIS_BIND), on loopback here."""
    run = tmp_path_factory.mktemp("tls")
    yield from _serve(
        StackSettings(redis_port=free_port(), run_dir=run, models_dir=run / "m", redis_tls=True)
    )


# --- ACL users --------------------------------------------------------------------------------------


def test_no_password_no_access(plain: StackSettings) -> None:
    settings = CommonSettings(redis_url=f"redis://127.0.0.1:{plain.redis_port}/0")
    with pytest.raises(RedisAccessError, match="requires a password and HERD_REDIS_URL has none"):
        check_access(sync_client(settings, socket_timeout=2), settings)
    password = (plain.run_dir / "redis" / "password").read_text().strip()
    assert (plain.run_dir / "redis" / "password").stat().st_mode & 0o077 == 0
    assert password not in (plain.run_dir / "redis" / "redis.conf").read_text()


def test_the_worker_user_runs_what_workers_need_and_nothing_else(plain: StackSettings) -> None:
    worker = redis.Redis.from_url(plain.redis_user_url(WORKER_USER), socket_timeout=2, decode_responses=True)
    try:
        # What RQ and Herd's workers do: lists, hashes, streams, scripts on rq:* and herd:* keys.
        worker.rpush("rq:queue:herd-shared", "job-1")
        assert worker.blpop(["rq:queue:herd-shared"], timeout=1) == ("rq:queue:herd-shared", "job-1")
        worker.hset("rq:job:job-1", mapping={"status": "started"})
        worker.xadd("herd:events:job-1", {"type": "token", "text": "hi"})
        assert worker.eval("return redis.call('HGET', KEYS[1], 'status')", 1, "rq:job:job-1") == "started"
        assert "redis_version" in worker.info("server")
        worker.client_setname("w0")
        worker.client_list()
        refused = [
            ("FLUSHALL",),
            ("CONFIG", "GET", "*"),
            ("KEYS", "*"),
            ("ACL", "LIST"),
            ("SCRIPT", "FLUSH"),
            ("CLIENT", "KILL", "ID", "1"),
            ("SHUTDOWN", "NOSAVE"),
            ("GET", "other:key"),  # a key outside rq:* and herd:*
            ("SET", "session:1", "x"),
            ("MONITOR",),
            ("REPLICAOF", "127.0.0.1", "1"),
        ]
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                worker.execute_command(*command)
        # Inside a script the same rules hold: no key outside its patterns through EVAL either.
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.eval("return redis.call('GET', KEYS[1])", 1, "other:key")
    finally:
        worker.close()


def test_the_api_user_has_its_own_narrower_set(plain: StackSettings) -> None:
    api = redis.Redis.from_url(plain.redis_user_url(API_USER), socket_timeout=2, decode_responses=True)
    try:
        api.rpush("rq:queue:herd-shared", "job-2")
        api.set("herd:cancel:job-2", "1", ex=60)
        assert api.xread({"herd:events:none": "0"}, block=10) == []
        # The workers' commands, not the API's: blocking pops, INFO, CLIENT LIST.
        for command in (("BLPOP", "rq:queue:herd-shared", "1"), ("INFO",), ("CLIENT", "LIST"), ("FLUSHDB",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                api.execute_command(*command)
    finally:
        api.close()
    # Each user has its own password: the API's does not log in as a worker.
    api_password = parse_redis_url(plain.redis_user_url(API_USER)).password
    as_worker = build_url(
        "127.0.0.1", plain.redis_port, tls=False, username=WORKER_USER, password=api_password
    )
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(as_worker, socket_timeout=2).ping()


# --- TLS --------------------------------------------------------------------------------------------


def test_tls_with_the_ca_works_and_names_each_tls_mistake(tls: StackSettings) -> None:
    url = tls.redis_user_url(WORKER_USER)
    assert url.startswith("rediss://")
    good = _client_settings(tls, url)
    client = sync_client(good, socket_timeout=3)
    check_access(client, good)
    assert client.set("herd:tls", "1")
    client.close()
    # The system's CAs do not know a self-signed certificate.
    untrusted = CommonSettings(redis_url=url)
    with pytest.raises(RedisAccessError, match="HERD_REDIS_CA"):
        check_access(sync_client(untrusted, socket_timeout=3), untrusted)
    # rediss:// against a plain Redis.
    with running_redis() as plain_url:
        wrong_way = CommonSettings(
            redis_url=plain_url.replace("redis://", "rediss://"), redis_ca=good.redis_ca
        )
        with pytest.raises(RedisAccessError, match="does not speak TLS"):
            check_access(sync_client(wrong_way, socket_timeout=1, socket_connect_timeout=1), wrong_way)


def test_the_stack_hands_each_process_its_own_user_over_tls(tls: StackSettings) -> None:
    """What Stack.child_env gives the API and the workers logs them in, over TLS, each as its own user."""
    stack = Stack(tls, env={})
    for user in (API_USER, WORKER_USER):
        env = stack.child_env(user)
        assert env["HERD_REDIS_URL"].startswith("rediss://") and Path(env["HERD_REDIS_CA"]).is_file()
        settings = CommonSettings(redis_url=env["HERD_REDIS_URL"], redis_ca=env["HERD_REDIS_CA"])
        client = sync_client(settings, socket_timeout=3)
        check_access(client, settings)
        assert client.client_info()["user"] == user
        client.close()

    async def api_ping() -> str:
        settings = CommonSettings(
            redis_url=stack.child_env(API_USER)["HERD_REDIS_URL"], redis_ca=stack.child_env()["HERD_REDIS_CA"]
        )
        client = async_client(settings, max_connections=4, timeout=5, decode_responses=True)
        try:
            info = await client.client_info()
            return str(info["user"])
        finally:
            await client.aclose()

    # The API's pool (asyncio, blocking at its limit) over TLS too.
    assert asyncio.run(api_ping()) == API_USER


# --- a worker that cannot log in refuses to start -------------------------------------------------


def test_a_worker_refuses_to_start_naming_the_problem(
    plain: StackSettings, tls: StackSettings, tmp_path: Path
) -> None:
    good = parse_redis_url(plain.redis_user_url(WORKER_USER))
    cases = {
        "wrong password": (
            build_url("127.0.0.1", plain.redis_port, tls=False, username=WORKER_USER, password="not-it"),
            [f"refused user '{WORKER_USER}'", "wrong password", "HERD_REDIS_URL"],
        ),
        "wrong user": (
            build_url(
                "127.0.0.1", plain.redis_port, tls=False, username="herd-wroker", password=good.password
            ),
            ["refused user 'herd-wroker'", "no such ACL user", "HERD_REDIS_URL"],
        ),
        "plain TCP to TLS": (
            build_url(
                "127.0.0.1",
                tls.redis_port,
                tls=False,
                username=WORKER_USER,
                password=parse_redis_url(tls.redis_user_url(WORKER_USER)).password,
            ),
            ["speaks TLS", "rediss://", "HERD_REDIS_URL"],
        ),
    }
    # All three at once: each pays the worker's start-up (llama.cpp's import) in parallel.
    procs = {}
    for name, (url, _) in cases.items():
        env = {
            **os.environ,
            "HERD_REDIS_URL": url,
            "OLLAMA_MODELS": str(tmp_path / "models"),
            "HERD_WORKER_ID": f"refused-{name.replace(' ', '-')}",
            "HERD_WORKER_METRICS_PORT": str(free_port()),
        }
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "workers.main"],
            env=env,
            cwd=SOURCE_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for name, (url, expected) in cases.items():
        out, _ = procs[name].communicate(timeout=60)
        assert procs[name].returncode != 0, f"{name}: the worker started\n{out}"
        for text in expected:
            assert text in out, f"{name}: {text!r} not in\n{out}"
        assert "Traceback" not in out, f"{name}: a traceback instead of a message\n{out}"
        password = parse_redis_url(url).password
        assert password and password not in out, f"{name}: the password is in the message"
    assert "***" in redact(cases["wrong password"][0])


# --- herd join --------------------------------------------------------------------------------------


def test_herd_join_prints_settings_that_log_a_worker_in(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The main host's Redis on every address (TLS on); the printed lines, used as printed, log in as herd-worker."""
    from cli.main import main as herd

    run = tmp_path / "run"
    port = free_port()
    for name, value in {
        "HERD_RUN_DIR": str(run),
        "HERD_REDIS_PORT": str(port),
        "HERD_REDIS_BIND": "0.0.0.0",
        "OLLAMA_MODELS": str(tmp_path / "m"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HERD_REDIS_TLS", raising=False)
    # Before the stack ever ran there is no certificate to hand out: said so, not a broken line.
    assert herd(["join", "--host", "127.0.0.1"]) == 1
    assert "start the stack once" in capsys.readouterr().err

    with contextmanager(_serve)(
        StackSettings(run_dir=run, redis_port=port, redis_bind="0.0.0.0", models_dir=tmp_path / "m")
    ):
        assert herd(["join", "--host", "127.0.0.1", "--worker-id", "gpu2-0"]) == 0
        lines = dict(
            line.split("=", 1) for line in capsys.readouterr().out.splitlines() if line and line[0] != "#"
        )
        assert lines["HERD_WORKER_ID"] == "gpu2-0"
        target = parse_redis_url(lines["HERD_REDIS_URL"])
        assert (target.tls, target.user, target.hosts) == (True, WORKER_USER, (("127.0.0.1", port),))
        ca = redis_tls_paths(StackSettings(run_dir=run))[0]
        settings = CommonSettings(redis_url=lines["HERD_REDIS_URL"], redis_ca=ca)
        client = sync_client(settings, socket_timeout=3)
        check_access(client, settings)
        assert client.client_info()["user"] == WORKER_USER
        client.close()
        assert lines["HERD_STORE_URL"] == "http://127.0.0.1:11434"

        assert herd(["join", "--host", "127.0.0.1", "--format", "command"]) == 0
        command = capsys.readouterr().out
        assert ca.read_text().strip() in command and command.rstrip().endswith("herd worker")
        assert "HERD_REDIS_CA=~/.herd/redis-ca.crt" in command


def test_herd_join_refuses_a_loopback_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cli.main import main as herd

    monkeypatch.setenv("HERD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("HERD_REDIS_BIND", raising=False)
    assert herd(["join"]) == 1
    assert "HERD_REDIS_BIND" in capsys.readouterr().err


def test_a_lan_bind_without_tls_is_refused_naming_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from herd.settings import SettingsError, load_settings

    monkeypatch.setenv("HERD_REDIS_BIND", "192.168.1.50")
    monkeypatch.setenv("HERD_REDIS_TLS", "0")
    with pytest.raises(SettingsError) as refused:
        load_settings(StackSettings)
    message = str(refused.value.code)
    assert (
        "HERD_REDIS_BIND=192.168.1.50" in message
        and "HERD_REDIS_TLS" in message
        and "requires TLS" in message
    )
    monkeypatch.delenv("HERD_REDIS_TLS")
    assert load_settings(StackSettings).redis_tls_on  # on by itself off loopback


# --- HERD_REDIS_URL's forms -------------------------------------------------------------------------


def test_redis_url_forms_parse_and_bad_ones_are_named_without_their_password() -> None:
    target = parse_redis_url("rediss+sentinel://herd-worker:p%40ss@s1:26380,[::1]/herd/2?sentinel_password=x")
    assert (target.tls, target.master, target.db, target.user, target.password) == (
        True, "herd", 2, "herd-worker", "p@ss",
    )  # fmt: skip
    assert target.hosts == (("s1", 26380), ("::1", 26379)) and target.sentinel_password == "x"
    assert (
        parse_redis_url(build_url("10.0.0.5", 6380, tls=True, username="u", password="a/b:c")).password
        == "a/b:c"
    )
    for bad, why in [
        ("http://h", "does not start with"),
        ("redis://a,b/0", "lists several hosts"),
        ("redis+sentinel://s1:26379", "names no master"),
        ("redis://h:0", "out of range"),
        ("redis://u:secret@h/x", "not a number"),
    ]:
        with pytest.raises(ValueError, match=why) as refused:
            parse_redis_url(bad)
        assert "secret" not in str(refused.value)
    with pytest.raises(SettingsError, match="HERD_REDIS_URL"):
        load_settings(CommonSettings, HERD_REDIS_URL="redis+sentinel://s1")
