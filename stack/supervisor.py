"""The stack supervisor: runs redis-server, gunicorn, the workers and nginx, and keeps them running.

Start order is the dependency order (Redis, the API, the workers, nginx last so clients only get in once
everything behind it is up); stop order is the reverse. A worker or Redis that dies is restarted with a
backoff, Redis on its own config and data (the append-only file), while everything else keeps running: the
API answers 503 meanwhile and the API and workers reconnect by themselves. The death of the API or nginx
stops the whole stack, since nothing can be served without it.

Redis always has a password; the API and the workers log in as their own ACL users (stack/redis_auth.py),
over TLS when HERD_REDIS_BIND opens it to the LAN. With HERD_REDIS_EXTERNAL no redis-server runs here and
every process uses HERD_REDIS_URL as given (a Sentinel URL, say).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

import redis

import herd
from herd.redis_connect import sync_client
from herd.settings import DEFAULT_DRAIN_S, CommonSettings
from stack.nginx import check_nginx_conf, logs_dir, nginx_argv, nginx_dir, write_nginx_conf
from stack.processes import ManagedProcess, ProcessDied, ProcessError, describe_exit
from stack.redis_auth import ADMIN_USER, API_USER, WORKER_USER
from stack.redis_conf import bind_addresses, redis_argv, write_redis_conf
from stack.settings import StackSettings
from stack.tls import redis_tls_paths

logger = logging.getLogger(__name__)

# Seconds each process gets between its graceful stop signal and SIGKILL. The API's (and nginx's, which
# relays the same streams) is gunicorn's --graceful-timeout plus a margin, so in-flight streams can finish;
# a worker's is its HERD_DRAIN_SECONDS plus _WORKER_STOP_MARGIN_S (see Stack.worker_stop_timeout).
API_GRACEFUL_TIMEOUT_S = 30
_STOP_TIMEOUT_S = {"nginx": API_GRACEFUL_TIMEOUT_S + 5.0, "api": API_GRACEFUL_TIMEOUT_S + 5.0, "redis": 15.0}
# Unloading models and withdrawing the worker's state after the drain.
_WORKER_STOP_MARGIN_S = 10.0
# A worker that dies is restarted after 1, 2, 4 ... seconds, at most this long; the backoff starts over
# once a worker has stayed up for WORKER_STABLE_S.
WORKER_BACKOFF_MAX_S = 30.0
WORKER_STABLE_S = 60.0
# Redis is restarted on the same schedule, capped much lower: every request fails while it is down, and a
# request waiting for its job gives up after 30 s (app/relay.py REDIS_OUTAGE_S), so a Redis that keeps
# dying is retried every few seconds (logged each time), never in a tight loop.
REDIS_BACKOFF_MAX_S = 5.0
_POLL_S = 0.5
# Where python -m finds the app, workers and herd packages, whether installed (editable or not) or run from a
# checkout: the directory that holds them.
_SOURCE_ROOT = Path(herd.__file__).resolve().parent.parent


class StackError(RuntimeError):
    """The stack could not start, or a process it cannot run without died."""


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of GET ``url``, None when nothing answered; never goes through an HTTP proxy."""
    # The environment may set HTTP_PROXY (the LAN server case); a loopback check must not follow it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails with EADDRINUSE (another process, or a stale stack, holds it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # nginx reports an unresolvable host itself, in its own words
    family, socktype, proto, _, addr = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        # Same option servers set, so a port in TIME_WAIT from our last run does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


class Stack:
    """redis-server, gunicorn, N workers and nginx as supervised child processes of this one."""

    def __init__(self, settings: StackSettings, env: dict[str, str] | None = None) -> None:
        """``env`` is the base environment of every child (default: ours)."""
        self.settings = settings
        self.base_env = dict(os.environ if env is None else env)
        self.redis: ManagedProcess | None = None
        self.api: ManagedProcess | None = None
        self.workers: list[ManagedProcess] = []
        # Runs pull/push/create jobs (queue herd-models); supervised and restarted like the workers.
        self.store_worker: ManagedProcess | None = None
        self.nginx: ManagedProcess | None = None
        self._lock_file: IO[bytes] | None = None
        self._stop_requested = threading.Event()
        self._stopped = True
        # Per supervised process name: deaths in a row, and when the pending restart is due.
        self._failures: dict[str, int] = {}
        self._restart_at: dict[str, float] = {}

    # --- environment and commands ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL clients use (through nginx)."""
        return self.settings.base_url

    def child_env(self, redis_user: str = WORKER_USER) -> dict[str, str]:
        """The environment every child gets: ours, pointed at the stack's Redis and the resolved store.

        Each child logs in to Redis as ``redis_user`` (the API and the workers have their own ACL users);
        over TLS it verifies Redis with the self-signed certificate unless the operator supplied one.
        """
        env = dict(self.base_env)
        s = self.settings
        if s.redis_external:
            # An operator-run Redis (Sentinel, a managed service): every process uses HERD_REDIS_URL as given.
            env["HERD_REDIS_URL"] = s.redis_url
            for name, path in (
                ("HERD_REDIS_CA", s.redis_ca),
                ("HERD_REDIS_CERT", s.redis_cert),
                ("HERD_REDIS_KEY", s.redis_key),
            ):
                if path is not None:
                    env[name] = str(path)
        else:
            env["HERD_REDIS_URL"] = s.redis_user_url(redis_user)
            if s.redis_tls_on and s.redis_tls_cert is None:
                env["HERD_REDIS_CA"] = str(redis_tls_paths(s)[0])
        env["OLLAMA_MODELS"] = str(self.settings.models_dir.expanduser().absolute())
        # Log lines reach the log files as they happen, not when a buffer fills.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def worker_env(self, index: int) -> dict[str, str]:
        """The environment of worker ``index``.

        With HERD_GPUS each worker is pinned to its own GPU through CUDA_VISIBLE_DEVICES (it then sees
        that one device as device 0 and offloads there); CPU workers get no device.
        """
        env = self.child_env()
        env["HERD_WORKER_ID"] = f"w{index}"
        gpus = self.settings.gpu_list
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index]
        env["HERD_WORKER_METRICS_PORT"] = str(self.worker_metrics_port(index))
        return env

    def worker_metrics_port(self, index: int) -> int:
        """Where worker ``index`` serves its own /metrics: the ports right after HERD_METRICS_PORT."""
        return self.settings.metrics_port + 1 + index

    @property
    def worker_metrics_urls(self) -> list[str]:
        """Each worker's /metrics, in worker order (loopback: for Prometheus on this host and tests)."""
        return [
            f"http://127.0.0.1:{self.worker_metrics_port(i)}/metrics"
            for i in range(self.settings.worker_count)
        ]

    def api_argv(self) -> list[str]:
        """gunicorn with uvicorn workers, bound on loopback where only nginx reaches it."""
        s = self.settings
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "uvicorn_worker.UvicornWorker",
            "--workers",
            str(s.api_processes),
            "--bind",
            f"127.0.0.1:{s.api_port}",
            "--graceful-timeout",
            str(API_GRACEFUL_TIMEOUT_S),
            # Longer than nginx's upstream keepalive_timeout (60s): the proxy closes idle connections
            # first, so it never sends a request on one the API is closing.
            "--keep-alive",
            "75",
            "--log-level",
            "debug" if s.debug else "info",
            "--pid",
            str(s.run_dir / "api" / "gunicorn.pid"),
            "app.main:create_app()",
        ]

    def worker_stop_timeout(self) -> float:
        """Seconds a worker gets from SIGTERM to SIGKILL: its drain (HERD_DRAIN_SECONDS) and a margin."""
        try:
            drain = float(self.base_env.get("HERD_DRAIN_SECONDS", DEFAULT_DRAIN_S))
        except ValueError:
            drain = DEFAULT_DRAIN_S  # the worker itself refuses to start, naming the variable
        return max(drain, 0.0) + _WORKER_STOP_MARGIN_S

    def worker_argv(self) -> list[str]:
        """One worker process."""
        return [sys.executable, "-m", "workers.main"]

    # --- readiness checks --------------------------------------------------------------------------

    def redis_admin_settings(self) -> CommonSettings:
        """Settings that reach the stack's Redis as its admin (the readiness check, operators' tools)."""
        env = self.child_env(ADMIN_USER)

        def path(name: str) -> Path | None:
            return Path(env[name]) if env.get(name) else None

        return CommonSettings(
            redis_url=env["HERD_REDIS_URL"],
            redis_ca=path("HERD_REDIS_CA"),
            redis_cert=path("HERD_REDIS_CERT"),
            redis_key=path("HERD_REDIS_KEY"),
        )

    def _redis_ready(self) -> bool:
        client = sync_client(self.redis_admin_settings(), socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return bool(client.ping())
        except redis.RedisError:
            # Refused while starting, or BusyLoadingError while it replays the append-only file.
            return False
        finally:
            client.close()

    def _api_live(self) -> bool:
        return _http_status(f"http://127.0.0.1:{self.settings.api_port}/health/live") == 200

    def _ready_through_nginx(self) -> bool:
        # A worker or the API dying during start-up is an error now, not a timeout two minutes later.
        for proc in [self.redis, self.api, *self.workers]:
            if proc is not None:
                proc.check_running()
        return _http_status(f"{self.url}/health/ready") == 200

    # --- start and stop ----------------------------------------------------------------------------

    def _acquire_run_dir(self) -> None:
        """Hold an exclusive lock on the run dir so two stacks cannot share (and clobber) it."""
        run_dir = self.settings.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / "herd.lock", "ab")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StackError(f"another herd stack is running with run dir {run_dir}") from None
        self._lock_file = lock

    def _check_ports(self) -> None:
        s = self.settings
        checks = [
            ("OLLAMA_HOST", s.listen_host, s.listen_port),
            ("HERD_API_PORT", "127.0.0.1", s.api_port),
            *(
                ("HERD_REDIS_PORT", host, s.redis_port)
                for host in ([] if s.redis_external else bind_addresses(s.redis_bind))
            ),
            ("HERD_METRICS_PORT", "127.0.0.1", s.metrics_port),
            *(
                # Each worker serves its own /metrics right above it.
                ("HERD_METRICS_PORT", "127.0.0.1", self.worker_metrics_port(i))
                for i in range(s.worker_count)
            ),
        ]
        if not s.loopback_bind:
            # With TLS off loopback, nginx also serves plain HTTP on 127.0.0.1 at the same port.
            checks.append(("OLLAMA_HOST", "127.0.0.1", s.listen_port))
        for variable, host, port in checks:
            if _port_in_use(host, port):
                raise StackError(
                    f"port {port} on {host} ({variable}) is already in use: another server (an Ollama, "
                    f"an earlier stack) holds it; stop it or set {variable}"
                )

    def start(self, timeout: float = 180.0) -> None:
        """Render and check the configs, start every process in order, and wait until /health/ready is 200."""
        if not self._stopped:
            raise StackError("the stack is already running")
        s = self.settings
        started = time.monotonic()
        self._stop_requested.clear()
        self._acquire_run_dir()
        self._stopped = False
        try:
            logs = logs_dir(s)
            nginx_conf = write_nginx_conf(s)
            check_nginx_conf(nginx_conf, nginx_dir(s))
            redis_conf = None if s.redis_external else write_redis_conf(s)
            self._check_ports()
            env = self.child_env()
            api_env = self.child_env(API_USER)

            if redis_conf is not None:
                self.redis = ManagedProcess(
                    "redis",
                    redis_argv(redis_conf),
                    log_path=logs / "redis.log",
                    env=env,
                    cwd=redis_conf.parent,
                    pid_path=s.run_dir / "redis" / "redis.pid",
                )
                self.redis.start()
                self.redis.wait_ready(self._redis_ready, timeout=30)

            # The workers need only Redis: they start beside the API (both spend seconds importing), not
            # after it, which takes seconds off every start.
            self.workers = [
                ManagedProcess(
                    f"worker-w{i}",
                    self.worker_argv(),
                    log_path=logs / f"worker-w{i}.log",
                    env=self.worker_env(i),
                    cwd=_SOURCE_ROOT,
                    pid_path=s.run_dir / "workers" / f"w{i}.pid",
                )
                for i in range(s.worker_count)
            ]
            for worker in self.workers:
                worker.start()
            self.store_worker = ManagedProcess(
                "store-worker",
                [sys.executable, "-m", "workers.store.worker"],
                log_path=logs / "store-worker.log",
                env=env,
                cwd=_SOURCE_ROOT,
            )
            self.store_worker.start()

            (s.run_dir / "api").mkdir(parents=True, exist_ok=True)
            # gunicorn's processes share their Prometheus counters through files here; a stale set from
            # an earlier run would add its counts to this one.
            prom_dir = s.run_dir / "api" / "prometheus"
            shutil.rmtree(prom_dir, ignore_errors=True)
            prom_dir.mkdir(parents=True)
            self.api = ManagedProcess(
                "api",
                self.api_argv(),
                log_path=logs / "api.log",
                env={**api_env, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)},
                cwd=_SOURCE_ROOT,
            )
            self.api.start()
            self.api.wait_ready(self._api_live, timeout=60)

            self.nginx = ManagedProcess(
                "nginx",
                nginx_argv(nginx_conf, nginx_dir(s)),
                log_path=logs / "nginx.log",
                # nginx never talks to Redis: it gets no credentials for it.
                env={k: v for k, v in env.items() if not k.startswith("HERD_REDIS_")},
                cwd=nginx_dir(s),
            )
            self.nginx.start()
            remaining = max(10.0, timeout - (time.monotonic() - started))
            self.nginx.wait_ready(self._ready_through_nginx, timeout=remaining)
        except BaseException:
            # Whatever failed (or a Ctrl-C during start-up), leave no process behind.
            self.stop()
            raise
        logger.info("stack ready url=%s in %.1fs run_dir=%s", self.url, time.monotonic() - started, s.run_dir)

    def stop(self) -> None:
        """Stop everything in reverse start order: nginx and the API, the workers, Redis. Idempotent.

        nginx (SIGQUIT: it closes its listeners and finishes open requests) and the API (SIGTERM:
        gunicorn's graceful timeout) stop together while the workers still run, so a stream open at that
        moment completes. Then the workers drain what is left (nothing, usually) in parallel.
        """
        if self._stopped:
            return
        logger.info("stopping the stack")
        front = [
            (p, sig) for p, sig in ((self.nginx, signal.SIGQUIT), (self.api, signal.SIGTERM)) if p is not None
        ]
        for proc, sig in front:
            proc.terminate(sig)
        for proc, sig in front:
            proc.stop(_STOP_TIMEOUT_S[proc.name], sig)
        supervised = [*self.workers, *([self.store_worker] if self.store_worker is not None else [])]
        for worker in supervised:
            worker.terminate()
        for worker in supervised:
            worker.stop(self.worker_stop_timeout())
        if self.redis is not None:
            self.redis.stop(_STOP_TIMEOUT_S["redis"])
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        self._stopped = True
        logger.info("stack stopped")

    # --- supervision -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Make run_forever() return after stopping the stack (safe from a signal handler)."""
        self._stop_requested.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("received %s; stopping the stack", signal.Signals(signum).name)
        self.request_stop()

    def _supervise(self, proc: ManagedProcess, now: float, stop_timeout: float, backoff_max: float) -> None:
        """Schedule, or carry out, the restart of a process that died: after 1, 2, 4 ... s, at most ``backoff_max``."""
        if proc.alive:
            return
        restart_at = self._restart_at.get(proc.name)
        if restart_at is None:
            code = proc.returncode
            failures = self._failures.get(proc.name, 0)
            if proc.uptime() >= WORKER_STABLE_S:
                failures = 0
            delay = min(backoff_max, 2.0**failures)
            self._failures[proc.name] = failures + 1
            self._restart_at[proc.name] = now + delay
            logger.warning(
                "process=%s pid=%s %s; restarting in %.0fs (restart %d)\n%s",
                proc.name,
                proc.pid,
                describe_exit(code) if code is not None else "stopped",
                delay,
                proc.restarts + 1,
                proc.log_tail(10),
            )
        elif now >= restart_at:
            del self._restart_at[proc.name]
            try:
                proc.restart(stop_timeout)
            except ProcessError as exc:
                # Cannot even exec: no backoff will fix that; keep trying slowly and say why.
                logger.error("process=%s restart failed: %s", proc.name, exc)

    def check_once(self) -> None:
        """One supervision pass: StackError if the API or nginx died; restart a dead Redis or worker."""
        for proc in (self.api, self.nginx):
            if proc is None:
                continue
            try:
                proc.check_running()
            except ProcessDied as exc:
                raise StackError(f"{exc}\nthe stack cannot run without {proc.name}; stopping it") from None
        now = time.monotonic()
        if self.redis is not None:
            # Same argv, so the same redis.conf: same port, same data dir, its append-only file replayed.
            self._supervise(self.redis, now, _STOP_TIMEOUT_S["redis"], REDIS_BACKOFF_MAX_S)
        for worker in [*self.workers, *([self.store_worker] if self.store_worker is not None else [])]:
            self._supervise(worker, now, self.worker_stop_timeout(), WORKER_BACKOFF_MAX_S)

    def run_forever(self, install_signal_handlers: bool = True) -> int:
        """Supervise until SIGINT/SIGTERM (returns 0) or a vital process dies (returns 1); then stop."""
        previous: dict[signal.Signals, Callable[[int, FrameType | None], object] | int | None] = {}
        if install_signal_handlers:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            while not self._stop_requested.wait(_POLL_S):
                self.check_once()
            return 0
        except StackError as exc:
            logger.error("%s", exc)
            return 1
        finally:
            self.stop()
            for sig, handler in previous.items():
                with contextlib.suppress(TypeError, ValueError):
                    signal.signal(sig, handler)
