"""llama-cpp-python's own server (`python -m llama_cpp.server`) as the comparison point, on a free port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.ports import free_port
from bench.server_process import server_process


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
    with server_process(argv, "python -m llama_cpp.server", f"{base}/v1/models", log_path, timeout):
        yield base
