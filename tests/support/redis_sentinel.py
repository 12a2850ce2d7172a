"""A replicated Redis on loopback: a primary, a replica and a Sentinel, all real redis-server processes.

The primary and the replica run the config `herd up` renders (a password and the ACL users of
stack/redis_auth.py), so Herd's processes log in to either one as they would to the stack's own Redis.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from stack.processes import ManagedProcess
from stack.redis_auth import acl_lines
from stack.redis_conf import find_redis_server, render_redis_conf
from tests.support.ports import free_port

MASTER = "herd"


@dataclass
class ReplicatedRedis:
    """The processes and addresses of one primary, one replica and one Sentinel."""

    primary: ManagedProcess
    replica: ManagedProcess
    sentinel: ManagedProcess
    primary_port: int
    replica_port: int
    sentinel_port: int
    admin_password: str

    def master_address(self) -> tuple[str, int]:
        """Where the Sentinel says the master is now."""
        client = redis.Redis(port=self.sentinel_port, socket_timeout=2, decode_responses=True)
        try:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        finally:
            client.close()
        return str(host), int(port)

    def admin(self, port: int) -> redis.Redis:
        """An admin client of the server on ``port``."""
        return redis.Redis(port=port, password=self.admin_password, socket_timeout=2, decode_responses=True)


def _sentinel_argv(conf: Path) -> list[str]:
    # Debian's redis-sentinel package is a link to redis-server, which runs as a Sentinel given --sentinel.
    sentinel = shutil.which("redis-sentinel")
    return [sentinel, str(conf)] if sentinel else [find_redis_server(), str(conf), "--sentinel"]


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def replicated_redis(root: Path, admin_password: str, down_after_ms: int = 1000) -> Iterator[ReplicatedRedis]:
    """Start the three, wait until the replica is in sync and the Sentinel knows both; always stop them."""
    ports = {name: free_port() for name in ("primary", "replica", "sentinel")}
    procs: dict[str, ManagedProcess] = {}
    for name in ("primary", "replica"):
        data = root / name
        data.mkdir(parents=True)
        conf = render_redis_conf(ports[name], data, users=acl_lines(admin_password))
        # The replica logs in to the primary as the admin; either may become the primary.
        conf += f'masterauth "{admin_password}"\nmasteruser default\nrepl-diskless-sync-delay 0\n'
        if name == "replica":
            conf += f"replicaof 127.0.0.1 {ports['primary']}\n"
        (data / "redis.conf").write_text(conf)
        procs[name] = ManagedProcess(
            name, [find_redis_server(), str(data / "redis.conf")], log_path=root / f"{name}.log", cwd=data
        )
    sentinel_dir = root / "sentinel"
    sentinel_dir.mkdir()
    (sentinel_dir / "sentinel.conf").write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {ports['sentinel']}",
                f'dir "{sentinel_dir}"',
                f"sentinel monitor {MASTER} 127.0.0.1 {ports['primary']} 1",
                f"sentinel auth-user {MASTER} default",
                f'sentinel auth-pass {MASTER} "{admin_password}"',
                f"sentinel down-after-milliseconds {MASTER} {down_after_ms}",
                f"sentinel failover-timeout {MASTER} 10000",
                f"sentinel parallel-syncs {MASTER} 1",
                "",
            ]
        )
    )
    procs["sentinel"] = ManagedProcess(
        "sentinel",
        _sentinel_argv(sentinel_dir / "sentinel.conf"),
        log_path=root / "sentinel.log",
        cwd=sentinel_dir,
    )
    with ExitStack() as stack:
        replicated = ReplicatedRedis(
            procs["primary"],
            procs["replica"],
            procs["sentinel"],
            ports["primary"],
            ports["replica"],
            ports["sentinel"],
            admin_password,
        )
        replica = replicated.admin(ports["replica"])
        sentinel = redis.Redis(port=ports["sentinel"], socket_timeout=2, decode_responses=True)
        stack.callback(replica.close)
        stack.callback(sentinel.close)
        for name in ("primary", "replica"):
            procs[name].start()
            stack.callback(procs[name].stop, 10.0)
        _wait(lambda: replica.info("replication")["master_link_status"] == "up", 20, "the replica to sync")
        # Started once the replica is attached: the Sentinel's first look at the primary finds it, instead of
        # its next one, ten seconds later.
        procs["sentinel"].start()
        stack.callback(procs["sentinel"].stop, 10.0)
        _wait(
            lambda: int(sentinel.sentinel_master(MASTER)["num-slaves"]) >= 1,
            20,
            "the Sentinel to see the replica",
        )
        yield replicated
