"""The full Herd stack for a benchmark: started on free ports with a given NUM_PARALLEL, and its worker's memory."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.memory import rss_bytes
from bench.ports import free_port
from stack.settings import StackSettings
from stack.supervisor import Stack

MODEL = "gemma3:270m"


@contextmanager
def running_stack(
    models_dir: Path, threads: int, num_parallel: int, *, batch_invariant: bool = False
) -> Iterator[Stack]:
    """redis-server, gunicorn, one worker and nginx on free loopback ports; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="herd-bench-run-") as run_dir:
        # By alias, as the environment spells them (model_validate keeps mypy's view of the aliases).
        settings = StackSettings.model_validate(
            {
                "OLLAMA_HOST": f"127.0.0.1:{free_port()}",
                "HERD_API_PORT": free_port(),
                "HERD_REDIS_PORT": free_port(),
                "HERD_METRICS_PORT": free_port(),
                "HERD_RUN_DIR": Path(run_dir),
                "OLLAMA_MODELS": models_dir,
                "HERD_WORKERS": 1,
            }
        )
        env = {
            "HERD_THREADS": str(threads),
            "OLLAMA_NUM_PARALLEL": str(num_parallel),
            "HERD_BATCH_INVARIANT": str(batch_invariant).lower(),
        }
        stack = Stack(settings, env=env)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


def worker_rss(stack: Stack) -> int:
    """Resident bytes of the stack's (only) worker process."""
    pid = stack.workers[0].pid
    if pid is None:
        raise RuntimeError("the stack's worker has no pid: it was never started")
    return rss_bytes(pid)


def loaded_size(stack: Stack) -> int:
    """The bundled model's `size` in /api/ps (weights + KV cache, as the worker accounts it)."""
    models = httpx.get(f"{stack.url}/api/ps", timeout=10).json()["models"]
    for m in models:
        if m["name"] == MODEL or m["model"] == MODEL:
            return int(m["size"])
    raise RuntimeError(f"{MODEL} is not in /api/ps after a request to it: {models}")


@dataclass(frozen=True)
class WorkerMemory:
    """The worker's RSS with the model loaded (after a warm-up request) and after the measured run."""

    num_parallel: int
    rss_loaded: int
    rss_after: int
    ps_size: int
