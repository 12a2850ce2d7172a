"""HERD_REDIS_URL's forms (redis://, rediss://, redis+sentinel://, rediss+sentinel://): parsed, built, redacted.

Kept apart from the client builder (herd/redis_connect.py) so that the settings can check a URL at start
without importing the module that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote

SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    """HERD_REDIS_URL, parsed."""

    tls: bool
    hosts: tuple[tuple[str, int], ...]  # one server, or the Sentinels
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    master: str | None = None  # the Sentinel service name; None for a direct connection
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def sentinel(self) -> bool:
        """Whether the master is found through Sentinels."""
        return self.master is not None

    @property
    def user(self) -> str:
        """The ACL user this URL logs in as (Redis's ``default`` when none is named)."""
        return self.username or "default"

    def where(self) -> str:
        """host:port (or the Sentinels and master) for messages, without credentials."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        return f"Sentinels {hosts} (master {self.master!r})" if self.sentinel else hosts


def _split_host(item: str, default_port: int, url: str) -> tuple[str, int]:
    """One ``host[:port]`` (``[v6]:port`` for IPv6) of a URL's authority."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"no host in {redact(url)!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"port {port_text!r} in {redact(url)!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} in {redact(url)!r} is out of range")
    return host, port


def parse_redis_url(url: str) -> RedisTarget:
    """Parse HERD_REDIS_URL; ValueError naming what is wrong (never echoing a password)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            f"{redact(url)!r} does not start with one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    authority, _, tail = rest.partition("/")
    tail, _, query_text = tail.partition("?")
    if "?" in authority:
        authority, _, query_text = authority.partition("?")
    userinfo, at, hostpart = authority.rpartition("@")
    username = password = None
    if at:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pass_text) if colon else None
    query = {k: v[-1] for k, v in parse_qs(query_text).items()}
    path = [p for p in tail.split("/") if p]
    sentinel = scheme.endswith("+sentinel")
    default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT
    hosts = tuple(_split_host(h, default_port, url) for h in hostpart.split(",") if h)
    if not hosts:
        raise ValueError(f"no host in {redact(url)!r}")
    master = None
    if sentinel:
        if not path:
            raise ValueError(f"{redact(url)!r} names no master: redis+sentinel://host:26379/<master>/<db>")
        master = unquote(path.pop(0))
    elif len(hosts) > 1:
        raise ValueError(f"{redact(url)!r} lists several hosts: only redis+sentinel:// takes a list")
    db_text = path[0] if path else query.get("db", "0")
    if len(path) > 1 or not db_text.isdigit():
        raise ValueError(f"the database in {redact(url)!r} is not a number")
    return RedisTarget(
        tls=scheme.startswith("rediss"),
        hosts=hosts,
        db=int(db_text),
        username=username,
        password=password,
        master=master,
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
    )


def redact(url: str) -> str:
    """The URL with its passwords replaced by ``***``, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostpart = authority.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:***@{hostpart}" if colon else f"***@{hostpart}"
    if "password=" in tail:
        head, _, query = tail.partition("?")
        parts = [
            p.split("=", 1)[0] + "=***" if p.split("=", 1)[0].endswith("password") else p
            for p in query.split("&")
        ]
        tail = head + "?" + "&".join(parts)
    return f"{scheme}{sep}{authority}{slash}{tail}"


def build_url(
    host: str, port: int, *, tls: bool, username: str | None = None, password: str | None = None, db: int = 0
) -> str:
    """A redis:// (or rediss://) URL with the credentials quoted, as parse_redis_url reads it back."""
    creds = ""
    if password is not None:
        creds = f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
    shown = f"[{host}]" if ":" in host else host
    return f"{'rediss' if tls else 'redis'}://{creds}{shown}:{port}/{db}"
