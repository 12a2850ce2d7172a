"""Settings of the stack supervisor (``herd up``): where to listen, the internal ports, how many processes."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator

from herd.redis_url import build_url
from herd.settings import CommonSettings
from stack.redis_auth import ADMIN_USER, admin_password, user_password

# Ollama's defaults: OLLAMA_HOST with no host means 127.0.0.1, with no port means 11434.
DEFAULT_LISTEN_HOST = "127.0.0.1"
DEFAULT_LISTEN_PORT = 11434


def parse_ollama_host(raw: str) -> tuple[str, int]:
    """Split an OLLAMA_HOST value into (host, port), filling Ollama's defaults for a missing part.

    Accepts ``host``, ``host:port``, ``:port``, ``http://host:port`` and ``[::1]:port``. An IPv6 host is
    returned without brackets. Raises ValueError with a short reason for anything else.
    """
    value = raw.strip()
    if not value:
        return DEFAULT_LISTEN_HOST, DEFAULT_LISTEN_PORT
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        # The stack serves plain HTTP today; https:// would promise TLS it does not terminate yet.
        if scheme != "http":
            raise ValueError(f"unsupported scheme {scheme!r} (only http:// is served)")
    elif value.count(":") > 1 and not value.startswith("["):
        raise ValueError("an IPv6 address needs brackets, as in [::1]:11434")
    else:
        value = "http://" + value
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when the port is not a number in 0..65535
    except ValueError as exc:
        raise ValueError(f"not a host[:port] ({exc})") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("expected host[:port] with nothing else")
    host = parts.hostname or DEFAULT_LISTEN_HOST
    if port == 0:
        raise ValueError("port 0 is not a port to listen on")
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif not _is_hostname_or_ipv4(host):
        raise ValueError(f"{host!r} is not a host name or address (IPv6 needs brackets: [::1]:11434)")
    return host, DEFAULT_LISTEN_PORT if port is None else port


# Ollama's built-in origins (envconfig.AllowedOrigins): the loopback and wildcard hosts with or without a
# port over http and https, and the schemes of desktop and editor shells.
DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)

# What one OLLAMA_ORIGINS entry may hold: a scheme, "://", and an authority (host[:port]) with '*'
# wildcards; no path, and nothing that could break out of the quoted regex nginx is given.
_ORIGIN_RE = re.compile(r"^(?P<scheme>[A-Za-z*][A-Za-z0-9+.*-]*)://(?P<authority>[A-Za-z0-9.*_\[\]:-]*)$")
# Host names that are loopback for the two rules that depend on it (the Host check and TLS).
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def parse_origins(raw: str) -> list[str]:
    """OLLAMA_ORIGINS as a list of patterns: comma-separated, blanks dropped; ValueError naming a bad entry."""
    patterns = [part.strip() for part in raw.split(",") if part.strip()]
    for pattern in patterns:
        if pattern != "*" and not _ORIGIN_RE.match(pattern):
            raise ValueError(
                f"{pattern!r} is not an origin pattern (scheme://host[:port], '*' wildcards, or *)"
            )
    return patterns


def origin_regex(pattern: str) -> str:
    """One origin pattern as an anchored regex: a '*' port matches digits only, a '*' elsewhere no '/' or ':'.

    Ollama matches wildcards as a prefix and a suffix, so its ``http://localhost:*`` also admits
    ``http://localhost.evil.com:1``; here every character outside a wildcard is literal and anchored.
    """
    if pattern == "*":
        return "^.*$"
    match = _ORIGIN_RE.match(pattern)
    if match is None:
        raise ValueError(f"{pattern!r} is not an origin pattern")
    scheme = "[a-z0-9+.-]*".join(re.escape(part) for part in match["scheme"].split("*"))
    authority = match["authority"]
    if authority == "*":
        rest = "[^/]*"  # scheme://* is any authority of that scheme, port included (app://*, chrome-extension://*)
    else:
        host, port_wild = (authority[:-2], True) if authority.endswith(":*") else (authority, False)
        rest = "[^/:]*".join(re.escape(part) for part in host.split("*"))
        if port_wild:
            rest += ":[0-9]+"
    return f"^{scheme}://{rest}$"


def _is_hostname_or_ipv4(host: str) -> bool:
    """True for a dotted IPv4 address or a DNS name made of letters, digits, '-' and '.'."""
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return all(
        label
        and len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )


class StackSettings(CommonSettings):
    """Settings of ``herd up``: the supervisor that runs redis-server, gunicorn, the workers and nginx."""

    ollama_host: str = Field(
        default=f"{DEFAULT_LISTEN_HOST}:{DEFAULT_LISTEN_PORT}",
        validation_alias=AliasChoices("OLLAMA_HOST"),
        description="Where nginx listens for clients: host, host:port, :port, http://host:port or [::1]:port.",
    )
    api_port: int = Field(
        default=11435,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("HERD_API_PORT"),
        description="The internal port gunicorn binds on 127.0.0.1; only nginx talks to it.",
    )
    redis_port: int = Field(
        default=11436,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("HERD_REDIS_PORT"),
        description="The port of the stack's own redis-server on 127.0.0.1.",
    )
    metrics_port: int = Field(
        default=11437,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("HERD_METRICS_PORT"),
        description="nginx's internal listener on 127.0.0.1 that serves /metrics to Prometheus.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        validation_alias=AliasChoices("HERD_WORKERS"),
        description="How many worker processes (each holds its own models) the stack runs.",
    )
    gpus: str = Field(
        default="",
        validation_alias=AliasChoices("HERD_GPUS"),
        description='GPUs to run one worker each on, pinned with CUDA_VISIBLE_DEVICES ("0,1" or GPU UUIDs); '
        "when set, it decides the number of workers instead of HERD_WORKERS. Empty: CPU workers.",
    )
    api_processes: int = Field(
        default=2,
        ge=1,
        le=64,
        validation_alias=AliasChoices("HERD_API_PROCESSES"),
        description="How many gunicorn worker processes serve the API.",
    )
    run_dir: Path = Field(
        default=Path(".run"),
        validation_alias=AliasChoices("HERD_RUN_DIR"),
        description="Where the stack keeps rendered configs, logs, pid files and Redis data.",
    )

    ollama_origins: str = Field(
        default="",
        validation_alias=AliasChoices("OLLAMA_ORIGINS"),
        description="Browser origins allowed besides Ollama's built-in ones: comma-separated, '*' wildcards, or *.",
    )
    metrics_public: bool = Field(
        default=False,
        validation_alias=AliasChoices("HERD_METRICS_PUBLIC"),
        description="Serve /metrics on the public listener (otherwise nginx answers 404 there).",
    )
    max_body_size: str = Field(
        default="16m",
        pattern=r"^[0-9]+[kKmMgG]?$",
        validation_alias=AliasChoices("HERD_MAX_BODY_SIZE"),
        description="The largest request body nginx accepts outside /api/blobs/ (nginx size: 16m, 512k).",
    )

    redis_external: bool = Field(
        default=False,
        validation_alias=AliasChoices("HERD_REDIS_EXTERNAL"),
        description="Run no redis-server: the API and the workers use HERD_REDIS_URL as given "
        "(an operator-run Redis, or redis+sentinel:// for a replicated one).",
    )
    redis_bind: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("HERD_REDIS_BIND"),
        description="A LAN address the stack's Redis listens on besides 127.0.0.1, for workers on other hosts "
        "(`herd join`); anything but loopback requires TLS. Default: loopback only.",
    )
    redis_tls: bool | None = Field(
        default=None,
        validate_default=True,
        validation_alias=AliasChoices("HERD_REDIS_TLS"),
        description="Serve Redis over TLS only (rediss://). Unset: on exactly when HERD_REDIS_BIND is not loopback; "
        "off with a LAN bind is refused.",
    )
    redis_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("HERD_REDIS_PASSWORD"),
        description="The Redis admin password; the API's and the workers' ACL passwords derive from it. "
        "Unset: a random one made once in <run dir>/redis/password.",
    )
    redis_tls_cert: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("HERD_REDIS_TLS_CERT"),
        description="PEM certificate Redis serves TLS with; unset: a self-signed one made at first start "
        "(<run dir>/redis/tls/, the CA file `herd join` names).",
    )
    redis_tls_key: Path | None = Field(
        default=None,
        validate_default=True,
        validation_alias=AliasChoices("HERD_REDIS_TLS_KEY"),
        description="The PEM private key of HERD_REDIS_TLS_CERT; set both or neither.",
    )

    tls_cert: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("HERD_TLS_CERT"),
        description="PEM certificate (chain) nginx serves HTTPS with on a non-loopback bind; "
        "unset: a self-signed one made at first start.",
    )
    tls_key: Path | None = Field(
        default=None,
        validate_default=True,
        validation_alias=AliasChoices("HERD_TLS_KEY"),
        description="The PEM private key of HERD_TLS_CERT; set both or neither.",
    )

    @field_validator("gpus")
    @classmethod
    def _gpu_list(cls, value: str) -> str:
        ids = [g.strip() for g in value.split(",")] if value.strip() else []
        for gpu in ids:
            if not re.fullmatch(r"\d+|(?:GPU|MIG)-[0-9A-Za-z-]+", gpu):
                raise ValueError(f"invalid GPU {gpu!r}: use indexes or UUIDs separated by commas, e.g. 0,1")
        if len(set(ids)) != len(ids):
            raise ValueError(f"a GPU is listed twice in {value!r}")
        return ",".join(ids)

    @property
    def gpu_list(self) -> list[str]:
        """The GPUs to pin one worker each to (empty: CPU workers)."""
        return self.gpus.split(",") if self.gpus else []

    @property
    def worker_count(self) -> int:
        """One worker per listed GPU, else HERD_WORKERS."""
        return len(self.gpu_list) or self.workers

    @field_validator("tls_cert", "tls_key", mode="after")
    @classmethod
    def _tls_files(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        this, other = (
            ("HERD_TLS_CERT", "HERD_TLS_KEY")
            if info.field_name == "tls_cert"
            else ("HERD_TLS_KEY", "HERD_TLS_CERT")
        )
        if info.field_name == "tls_key" and (value is None) != (info.data.get("tls_cert") is None):
            raise ValueError("HERD_TLS_CERT and HERD_TLS_KEY go together: set both or neither")
        if value is None:
            return None
        value = value.expanduser().absolute()
        if not value.is_file():
            raise ValueError(f"{this} {value} is not a file (the pair with {other} nginx serves HTTPS with)")
        return value

    @field_validator("redis_bind")
    @classmethod
    def _redis_bind_address(cls, value: str) -> str:
        value = value.strip().strip("[]")
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address (Redis binds addresses, not names)") from None

    @field_validator("redis_tls", mode="after")
    @classmethod
    def _redis_tls_off_lan(cls, value: bool | None, info: ValidationInfo) -> bool:
        bind = info.data.get("redis_bind", "127.0.0.1")
        lan = not ipaddress.ip_address(bind).is_loopback
        if value is False and lan:
            raise ValueError(
                f"HERD_REDIS_BIND={bind} is not a loopback address, and Redis off loopback requires TLS: "
                "unset HERD_REDIS_TLS (or set it to 1), or bind 127.0.0.1"
            )
        return lan if value is None else value

    @field_validator("redis_tls_cert", "redis_tls_key", mode="after")
    @classmethod
    def _redis_tls_files(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        this, other = (
            ("HERD_REDIS_TLS_CERT", "HERD_REDIS_TLS_KEY")
            if info.field_name == "redis_tls_cert"
            else ("HERD_REDIS_TLS_KEY", "HERD_REDIS_TLS_CERT")
        )
        if info.field_name == "redis_tls_key" and (value is None) != (
            info.data.get("redis_tls_cert") is None
        ):
            raise ValueError("HERD_REDIS_TLS_CERT and HERD_REDIS_TLS_KEY go together: set both or neither")
        if value is None:
            return None
        value = value.expanduser().absolute()
        if not value.is_file():
            raise ValueError(f"{this} {value} is not a file (the pair with {other} Redis serves TLS with)")
        return value

    @field_validator("ollama_origins")
    @classmethod
    def _origins_parse(cls, value: str) -> str:
        parse_origins(value)
        return value

    @field_validator("ollama_host")
    @classmethod
    def _ollama_host_parses(cls, value: str) -> str:
        parse_ollama_host(value)
        return value

    @field_validator("run_dir", mode="after")
    @classmethod
    def _run_dir_absolute(cls, value: Path) -> Path:
        # Children run with their own cwd and nginx resolves relative paths against its prefix,
        # so every path handed to them must be absolute.
        return value.expanduser().absolute()

    @field_validator("api_port", "redis_port", "metrics_port")
    @classmethod
    def _ports_distinct(cls, value: int, info: ValidationInfo) -> int:
        # Two of the stack's processes cannot bind one port; say so at start, not as a bind error later.
        # The message names both variables: the clash may come from a default, not from what was set.
        this = {"api_port": "HERD_API_PORT", "redis_port": "HERD_REDIS_PORT"}.get(
            info.field_name or "", "HERD_METRICS_PORT"
        )
        taken = {"HERD_API_PORT": info.data.get("api_port"), "HERD_REDIS_PORT": info.data.get("redis_port")}
        host = info.data.get("ollama_host")
        if host is not None:
            taken["OLLAMA_HOST"] = parse_ollama_host(host)[1]
        for name, port in taken.items():
            if port == value:
                raise ValueError(f"{this} and {name} are both port {value}")
        return value

    @property
    def listen_host(self) -> str:
        """The host nginx listens on (IPv6 without brackets)."""
        return parse_ollama_host(self.ollama_host)[0]

    @property
    def listen_port(self) -> int:
        """The port nginx listens on."""
        return parse_ollama_host(self.ollama_host)[1]

    @property
    def origin_patterns(self) -> list[str]:
        """Every allowed origin pattern: Ollama's built-in ones, then OLLAMA_ORIGINS."""
        return [*DEFAULT_ORIGINS, *parse_origins(self.ollama_origins)]

    @property
    def loopback_bind(self) -> bool:
        """Whether nginx listens on 127.0.0.1, ::1 or localhost only (other 127/8 addresses count as not)."""
        return self.listen_host.lower() in _LOOPBACK_HOSTS

    @property
    def tls(self) -> bool:
        """Whether nginx serves HTTPS on OLLAMA_HOST: on every bind but a loopback one."""
        return not self.loopback_bind

    @property
    def redis_tls_on(self) -> bool:
        """Whether the stack's Redis serves TLS only (HERD_REDIS_TLS, resolved against HERD_REDIS_BIND)."""
        return bool(self.redis_tls)

    def redis_user_url(self, user: str, host: str = "127.0.0.1") -> str:
        """The URL of the stack's Redis as ACL ``user`` (its password in it), reached at ``host``."""
        admin = admin_password(
            self.run_dir, self.redis_password.get_secret_value() if self.redis_password else None
        )
        return build_url(
            host, self.redis_port, tls=self.redis_tls_on, username=user, password=user_password(admin, user)
        )

    @property
    def stack_redis_url(self) -> str:
        """The admin URL of the stack's own redis-server (the supervisor's checks, operators, tests).

        The API and the workers get their own ACL users' URLs instead (Stack.child_env). The password is made
        on first use when HERD_REDIS_PASSWORD is unset (stack/redis_auth.py).
        """
        return self.redis_user_url(ADMIN_USER)

    @property
    def base_url(self) -> str:
        """The URL clients on this machine use; a wildcard listen address is reached through loopback.

        With TLS on, nginx also serves plain HTTP on 127.0.0.1 at the same port, for local clients and
        the supervisor's probe (which cannot verify a self-signed certificate).
        """
        if self.tls:
            return f"http://127.0.0.1:{self.listen_port}"
        host = self.listen_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.listen_port}"
