"""llama-cpp-python's own server (`python -m llama_cpp.server`) as the comparison point, on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.ports import free_port


class LlamaServerError(RuntimeError):
    """The server did not come up; the message carries its log's tail."""


@contextmanager
def llama_server(
    gguf: Path, threads: int, n_ctx: int, log_path: Path, timeout: float = 120.0
) -> Iterator[str]:
    """Run the server with its default settings on ``gguf`` and yield its base URL; stopped on exit.

    Its defaults stand, ``interrupt_requests`` among them: a pending request cuts the stream being
    served short, which is what its users get and what the benchmark counts as a failed request.
    """
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(n_ctx),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        # Its own process group, so stopping it stops any child it starts too.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise LlamaServerError(
                    f"python -m llama_cpp.server exited with {proc.returncode}:\n{_tail(log_path)}"
                )
            try:
                if httpx.get(f"{base}/v1/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise LlamaServerError(
                    f"llama_cpp.server not ready on {base} in {timeout:.0f}s:\n{_tail(log_path)}"
                )
            time.sleep(0.2)
        yield base
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
