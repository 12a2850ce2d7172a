"""``herd join``: what a worker on another host needs to join this host's stack, as .env lines or a command.

Run it on the main host (where ``herd up`` runs, with the same environment): it reads the stack's settings and
Redis password, and prints the worker ACL user's URL on HERD_REDIS_BIND, Redis's CA certificate and the store
URL the worker fetches model blobs from.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cli.commands import AddCommand

# Where the printed command and the compose worker profile put Redis's CA certificate on the worker host.
CA_PATH_COMMAND = "~/.herd/redis-ca.crt"
CA_PATH_COMPOSE = "./deploy/redis-ca.crt"


class JoinError(RuntimeError):
    """This host's stack cannot take workers from other hosts as configured; the message says what to set."""


@dataclass(frozen=True)
class JoinInfo:
    """What a worker host needs: its Redis URL (with the password), the CA certificate, the store URL."""

    redis_url: str
    ca_pem: str | None
    ca_source: Path | None
    store_url: str
    store_reachable: bool  # False when nginx listens on loopback only (OLLAMA_HOST)


def join_info(host: str | None = None) -> JoinInfo:
    """Read this host's stack settings; JoinError when its Redis is not reachable from another host."""
    from herd.settings import load_settings
    from stack.redis_auth import WORKER_USER
    from stack.settings import StackSettings
    from stack.tls import redis_tls_paths

    settings = load_settings(StackSettings)
    bind = ipaddress.ip_address(settings.redis_bind)
    if bind.is_loopback:
        raise JoinError(
            "this stack's Redis listens on loopback only (HERD_REDIS_BIND=127.0.0.1): set HERD_REDIS_BIND to this "
            "host's LAN address (TLS then goes on) and restart `herd up`, then run `herd join` again"
        )
    if host is None:
        if bind.is_unspecified:
            raise JoinError(
                f"HERD_REDIS_BIND={bind} names no one address: pass --host with the address workers dial"
            )
        host = str(bind)
    ca_pem = ca_source = None
    if settings.redis_tls_on:
        ca_source = settings.redis_ca if settings.redis_tls_cert is not None else redis_tls_paths(settings)[0]
        if ca_source is None:
            ca_pem = None  # the operator's certificate, from a CA the worker host already trusts
        elif not ca_source.is_file():
            raise JoinError(f"no Redis certificate at {ca_source} yet: start the stack once (`herd up`)")
        else:
            ca_pem = ca_source.read_text()
    scheme = "https" if settings.tls else "http"
    shown = f"[{host}]" if ":" in host else host
    store_url = f"{scheme}://{shown}:{settings.listen_port}"
    return JoinInfo(
        settings.redis_user_url(WORKER_USER, host), ca_pem, ca_source, store_url, not settings.loopback_bind
    )


def env_lines(info: JoinInfo, ca_path: str = CA_PATH_COMPOSE, worker_id: str | None = None) -> list[str]:
    """The worker host's .env lines (compose's `worker` profile reads these)."""
    lines = [
        "# Worker host settings printed by `herd join` on the main host; keep this file private (a password).",
        f"HERD_REDIS_URL={info.redis_url}",
    ]
    if info.ca_pem is not None:
        lines += [f"# Copy {info.ca_source} from the main host to {ca_path}.", f"HERD_REDIS_CA={ca_path}"]
    if not info.store_reachable:
        lines.append(
            "# The API listens on loopback only (OLLAMA_HOST): set OLLAMA_HOST to a LAN address for blob "
            "fetches, or share the store (NFS) and leave HERD_STORE_URL empty."
        )
    lines += [
        f"HERD_STORE_URL={info.store_url}",
        "# With API keys on (HERD_API_KEYS_FILE), a key for the worker's blob fetches:",
        "HERD_STORE_KEY=",
    ]
    if worker_id:
        lines.append(f"HERD_WORKER_ID={worker_id}")
    return lines


def command_text(info: JoinInfo, worker_id: str | None = None) -> str:
    """A shell snippet that writes the CA certificate and runs `herd worker` with the settings."""
    parts = []
    env = {"HERD_REDIS_URL": info.redis_url, "HERD_STORE_URL": info.store_url}
    if info.ca_pem is not None:
        parts.append(f"mkdir -p ~/.herd && cat > {CA_PATH_COMMAND} <<'EOF'\n{info.ca_pem.rstrip()}\nEOF")
        env["HERD_REDIS_CA"] = CA_PATH_COMMAND
    if worker_id:
        env["HERD_WORKER_ID"] = worker_id
    assigned = " ".join(
        f"{k}={v}" if k == "HERD_REDIS_CA" else f"{k}={shlex.quote(v)}" for k, v in env.items()
    )  # the CA path keeps its ~ unquoted so that the shell expands it
    parts.append(f"{assigned} herd worker")
    return "\n".join(parts)


def cmd_join(args: argparse.Namespace) -> int:
    """Print the .env lines (default) or the shell command for a worker on another host."""
    info = join_info(args.host)
    if args.format == "command":
        print(command_text(info, args.worker_id))
    else:
        print("\n".join(env_lines(info, worker_id=args.worker_id)))
    return 0


def register(add: AddCommand) -> None:
    """Add ``herd join`` to the ``herd`` parser."""
    parser = add("join", cmd_join, "Print the settings (or command) for a worker on another host to join")
    parser.add_argument(
        "--format", choices=("env", "command"), default="env", help="`.env` lines or a command"
    )
    parser.add_argument("--host", help="the address workers dial (default: HERD_REDIS_BIND)")
    parser.add_argument("--worker-id", help="HERD_WORKER_ID for the new worker (default: its host name)")
