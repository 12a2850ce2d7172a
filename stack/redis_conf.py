"""The stack's own redis-server: its config, rendered under the run dir, and its argv."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from stack.settings import StackSettings

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


def render_redis_conf(port: int, data_dir: Path, *, debug: bool = False) -> str:
    """A redis.conf for a foreground, loopback-only, persistent redis-server on ``port``."""
    lines = [
        "# Rendered by herd (stack/redis_conf.py) at every start of the stack; edits are overwritten.",
        "# Loopback only, with protected mode as a second guard: this Redis has no password.",
        "bind 127.0.0.1",
        "protected-mode yes",
        f"port {port}",
        # The supervisor owns the process: it must stay in the foreground and log to stdout,
        # which ManagedProcess sends to the stack's log file.
        "daemonize no",
        'logfile ""',
        f"loglevel {'verbose' if debug else 'notice'}",
        f"dir {_redis_quote(Path(data_dir).absolute())}",
        # Queued jobs and worker state survive a restart of the stack.
        "appendonly yes",
        "appendfsync everysec",
        "",
    ]
    return "\n".join(lines)


def redis_dir(settings: StackSettings) -> Path:
    """Where the stack keeps redis.conf and Redis's data files."""
    return settings.run_dir / "redis"


def write_redis_conf(settings: StackSettings) -> Path:
    """Render redis.conf into the run dir (data beside it) and return its path."""
    rdir = redis_dir(settings)
    data = rdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    path = rdir / "redis.conf"
    path.write_text(render_redis_conf(settings.redis_port, data, debug=settings.debug))
    return path


def redis_argv(conf: Path) -> list[str]:
    """The command line that runs redis-server with ``conf``."""
    return [find_redis_server(), str(Path(conf).absolute())]
