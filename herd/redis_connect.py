"""The one place every Herd process builds its Redis client from its settings.

HERD_REDIS_URL takes four schemes:

- ``redis://[user:password@]host:port/db``: plain TCP (loopback, or a trusted network).
- ``rediss://...``: TLS; the server's certificate must chain to HERD_REDIS_CA (else the system's CAs), and
  HERD_REDIS_CERT/HERD_REDIS_KEY are presented when the server asks for a client certificate.
- ``redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/db]``: the master that the listed
  Sentinels name, followed across failovers (redis-py's Sentinel client). The user and password are the
  master's; ``?sentinel_password=...`` (and ``sentinel_username``) authenticate to the Sentinels themselves.
- ``rediss+sentinel://...``: the same over TLS to the Sentinels and to the master.

check_access() turns the failures that no retry can fix (wrong password or user, TLS on one side only, an
untrusted certificate) into one message that names the problem and the setting, so a process can refuse to
start instead of retrying for ever.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import Sentinel

from herd.redis_url import RedisTarget, build_url, parse_redis_url, redact
from herd.settings import CommonSettings, SettingsError

__all__ = [
    "RedisAccessError",
    "RedisTarget",
    "async_client",
    "build_url",
    "check_access",
    "parse_redis_url",
    "redact",
    "sync_client",
]

log = logging.getLogger(__name__)


class RedisAccessError(SettingsError):
    """Redis refused this process for a reason no retry fixes: the message names the problem and setting."""


def _tls_kwargs(settings: CommonSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_ca is not None:
        kwargs["ssl_ca_certs"] = str(settings.redis_ca)
    if settings.redis_cert is not None and settings.redis_key is not None:
        kwargs["ssl_certfile"] = str(settings.redis_cert)
        kwargs["ssl_keyfile"] = str(settings.redis_key)
    return kwargs


def _connection_kwargs(target: RedisTarget, settings: CommonSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"db": target.db, "username": target.username, "password": target.password}
    if target.tls:
        kwargs.update(_tls_kwargs(settings))
    return kwargs


def _sentinel_kwargs(
    target: RedisTarget, settings: CommonSettings, options: dict[str, Any]
) -> dict[str, Any]:
    # The Sentinels get the timeouts of the data connections, and TLS when the URL asks for it.
    kwargs = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    kwargs.update(username=target.sentinel_username, password=target.sentinel_password)
    if target.tls:
        kwargs.update(_tls_kwargs(settings))
    return kwargs


def sync_client(settings: CommonSettings, **options: Any) -> redis.Redis:
    """A blocking client for HERD_REDIS_URL; ``options`` are redis-py connection options (timeouts...)."""
    target = parse_redis_url(settings.redis_url)
    if target.master is None:
        # from_url, as before: it keeps redis-py's URL defaults (no command retries, which would multiply
        # a socket timeout on a hung Redis) and reads the credentials and rediss:// itself.
        tls = _tls_kwargs(settings) if target.tls else {}
        tls.pop("ssl", None)
        return redis.Redis.from_url(settings.redis_url, **tls, **options)
    kwargs = {**_connection_kwargs(target, settings), **options}
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target, settings, options))
    client: redis.Redis = sentinel.master_for(target.master, **kwargs)
    return client


class _BlockingSentinelPool(AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """Sentinel's master pool that waits for a free connection at its limit, as the direct pool does."""


def async_client(
    settings: CommonSettings, *, max_connections: int, timeout: float, **options: Any
) -> aioredis.Redis:
    """An asyncio client whose pool holds ``max_connections`` and waits ``timeout`` s for a free one."""
    target = parse_redis_url(settings.redis_url)
    if target.master is None:
        tls = _tls_kwargs(settings) if target.tls else {}
        tls.pop("ssl", None)
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=max_connections, timeout=timeout, **tls, **options
        )
        return aioredis.Redis(connection_pool=pool)
    kwargs = {**_connection_kwargs(target, settings), **options}
    sentinel = AsyncSentinel(list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target, settings, options))
    client: aioredis.Redis = sentinel.master_for(
        target.master,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        timeout=timeout,
        **kwargs,
    )
    return client


def _speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake (its certificate unchecked: this only asks the protocol)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def _speaks_plain_redis(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` answers a plain-text PING as Redis does (+PONG, or an error such as -NOAUTH)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            raw.sendall(b"PING\r\n")
            return raw.recv(1)[:1] in (b"+", b"-")
    except OSError:
        return False


def _explain(
    exc: redis.RedisError, target: RedisTarget, settings: CommonSettings, variable: str
) -> str | None:
    """Why ``exc`` cannot be fixed by retrying, in words naming the setting; None when it might be."""
    where = target.where()
    text = str(exc)
    if target.password is None and (isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text):
        return f"Redis at {where} requires a password and {variable} has none: use redis://user:password@host"
    if (
        isinstance(exc, redis.AuthenticationError)
        or "WRONGPASS" in text
        or "invalid username-password" in text
    ):
        return (
            f"Redis at {where} refused user {target.user!r}: wrong password, or no such ACL user "
            f"(or it is disabled); check the user and password in {variable}"
        )
    if "NOAUTH" in text or "Authentication required" in text:
        return f"Redis at {where} requires a password and {variable} has none: use redis://user:password@host"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"Redis at {where} denies ACL user {target.user!r} a command it needs ({text}); {variable}"
    if (
        target.tls
        and isinstance(exc, redis.TimeoutError)
        and any(_speaks_plain_redis(h, p) for h, p in target.hosts)
    ):
        # A plain Redis reads a TLS hello as the start of a command and waits for the rest: a timeout.
        return f"Redis at {where} does not speak TLS: use redis:// instead of rediss:// in {variable}, or turn TLS on there"
    if not isinstance(exc, redis.ConnectionError):
        return None
    lowered = text.lower()
    if "certificate verify failed" in lowered or "certificate_verify_failed" in lowered:
        ca = (
            f"HERD_REDIS_CA ({settings.redis_ca})"
            if settings.redis_ca
            else "HERD_REDIS_CA (unset: the system's CAs)"
        )
        return f"Redis at {where} presented a TLS certificate that {ca} does not trust, or that names another host: {text}"
    if target.tls and (
        "wrong version number" in lowered or "record layer failure" in lowered or "unexpected eof" in lowered
    ):
        return f"Redis at {where} does not speak TLS: use redis:// instead of rediss:// in {variable}, or turn TLS on there"
    if "certificate required" in lowered or "tlsv13 alert certificate required" in lowered:
        return f"Redis at {where} asks for a client certificate: set HERD_REDIS_CERT and HERD_REDIS_KEY"
    if not target.tls and not target.sentinel and any(_speaks_tls(h, p) for h, p in target.hosts):
        return (
            f"Redis at {where} speaks TLS and {variable} asks for plain TCP: use rediss:// "
            "(and HERD_REDIS_CA for its certificate)"
        )
    return None


def check_access(client: redis.Redis, settings: CommonSettings, variable: str = "HERD_REDIS_URL") -> None:
    """PING once: RedisAccessError naming the problem when the credentials or TLS are wrong.

    An unreachable Redis is only logged: it may be restarting, and the caller's own retries cover that.
    """
    target = parse_redis_url(settings.redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = _explain(exc, target, settings, variable)
        if reason is not None:
            raise RedisAccessError(f"herd: cannot use Redis\n  {reason}") from None
        log.warning("redis is not reachable yet at %s: %s", target.where(), exc)
