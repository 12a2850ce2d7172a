"""The stack's own redis-server: its config, rendered under the run dir, and its argv."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from stack.redis_auth import acl_lines, admin_password
from stack.settings import StackSettings
from stack.tls import ensure_redis_tls_pair

_REDIS_FALLBACKS = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


class RedisServerMissing(RuntimeError):
    """redis-server is not installed."""


def find_redis_server() -> str:
    """The redis-server binary's path; RedisServerMissing with the install command when there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in _REDIS_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise RedisServerMissing(
        "redis-server is not installed (run `make setup`, or: sudo apt-get install -y redis-server)"
    )


def _redis_quote(value: object) -> str:
    """A value as a redis.conf double-quoted string (paths may hold spaces)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def bind_addresses(bind: str) -> list[str]:
    """The addresses Redis listens on: always loopback (the stack's own processes), plus HERD_REDIS_BIND."""
    if bind == "0.0.0.0":
        return [bind]  # the IPv4 wildcard already covers 127.0.0.1
    return ["127.0.0.1"] if bind == "127.0.0.1" else ["127.0.0.1", bind]


def render_redis_conf(
    port: int,
    data_dir: Path,
    *,
    users: list[str],
    bind: str = "127.0.0.1",
    tls: tuple[Path, Path] | None = None,
    debug: bool = False,
) -> str:
    """A redis.conf for a foreground, persistent redis-server on ``port``, with ACL ``users`` (redis_auth).

    Loopback only unless ``bind`` names another address; with ``tls`` (certificate, key) the port speaks TLS
    only, on every address: Redis cannot serve plain TCP on one address and TLS on another.
    """
    if not users:
        raise ValueError("a Redis without ACL users would have no password")
    lines = [
        "# Rendered by herd (stack/redis_conf.py) at every start of the stack; edits are overwritten.",
        "# Every user has a password (stack/redis_auth.py); protected mode stays on as a second guard.",
        f"bind {' '.join(bind_addresses(bind))}",
        "protected-mode yes",
    ]
    if tls is None:
        lines.append(f"port {port}")
    else:
        cert, key = tls
        lines += [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {_redis_quote(Path(cert).absolute())}",
            f"tls-key-file {_redis_quote(Path(key).absolute())}",
            # The password and the ACL user identify a client; a client certificate is not asked for.
            "tls-auth-clients no",
        ]
    lines += [
        # The supervisor owns the process: it must stay in the foreground and log to stdout,
        # which ManagedProcess sends to the stack's log file.
        "daemonize no",
        'logfile ""',
        f"loglevel {'verbose' if debug else 'notice'}",
        f"dir {_redis_quote(Path(data_dir).absolute())}",
        # Queued jobs and worker state survive a restart of the stack.
        "appendonly yes",
        "appendfsync everysec",
        *users,
        "",
    ]
    return "\n".join(lines)


def redis_dir(settings: StackSettings) -> Path:
    """Where the stack keeps redis.conf and Redis's data files."""
    return settings.run_dir / "redis"


def write_redis_conf(settings: StackSettings) -> Path:
    """Render redis.conf into the run dir (data beside it, owner-only: it holds password hashes)."""
    rdir = redis_dir(settings)
    data = rdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    path = rdir / "redis.conf"
    configured = settings.redis_password.get_secret_value() if settings.redis_password else None
    conf = render_redis_conf(
        settings.redis_port,
        data,
        users=acl_lines(admin_password(settings.run_dir, configured)),
        bind=settings.redis_bind,
        tls=ensure_redis_tls_pair(settings) if settings.redis_tls_on else None,
        debug=settings.debug,
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(conf)
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


def redis_argv(conf: Path) -> list[str]:
    """The command line that runs redis-server with ``conf``."""
    return [find_redis_server(), str(Path(conf).absolute())]
