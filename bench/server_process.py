"""A comparison server as a child process: started in its own process group, polled until ready, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


class ServerError(RuntimeError):
    """A server did not come up; the message carries its log's tail."""


def log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def server_process(
    argv: list[str], name: str, ready_url: str, log_path: Path, timeout: float = 120.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` until `ready_url` answers 200 and yield the process; stopped (its group too) on exit."""
    with open(log_path, "wb") as log:
        # Its own process group, so stopping it stops any child it starts too.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServerError(f"{name} exited with {proc.returncode}:\n{log_tail(log_path)}")
            try:
                if httpx.get(ready_url, timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ServerError(f"{name} not ready at {ready_url} in {timeout:.0f}s:\n{log_tail(log_path)}")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
