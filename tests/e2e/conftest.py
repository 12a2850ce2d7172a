"""The real stack for end-to-end tests: redis-server, gunicorn, a worker and nginx on free ports.

One stack serves the whole session (starting it costs seconds); tests that need other settings start
their own with `start_stack`. Every stack is stopped, and its processes killed, however a test ends.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from herd.names import ModelName
from herd.store import ModelStore
from stack.settings import StackSettings
from stack.setup import ensure_default_model
from stack.supervisor import Stack
from tests.support.ollama_store import write_ollama_model
from tests.support.ports import free_port, free_port_run
from tests.support.tiny_gguf import CHATML_TEMPLATE, TOOLS_TEMPLATE, write_tiny_llama

GEMMA = "gemma3:270m"
HANDMADE = "someone/handmade:v1"
# A prompt-style Go template like the ones older Ollama models ship.
HANDMADE_TEMPLATE = "{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}<|user|>{{ .Prompt }}<|end|><|assistant|>{{ .Response }}<|end|>"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Path:
    """A store with the bundled Gemma (as `make up` places it) and two tiny models."""
    root = tmp_path_factory.mktemp("models")
    store = ModelStore(root)
    ensure_default_model(store)
    ggufs = tmp_path_factory.mktemp("ggufs")
    store.import_gguf(ModelName.parse("tiny-a:latest"), write_tiny_llama(ggufs / "a.gguf", seed=1))
    store.import_gguf(
        ModelName.parse("tiny-chat:latest"),
        write_tiny_llama(ggufs / "chat.gguf", seed=2, chat_template=CHATML_TEMPLATE),
    )
    store.import_gguf(
        ModelName.parse("tiny-tools:latest"),
        write_tiny_llama(ggufs / "tools.gguf", seed=4, chat_template=TOOLS_TEMPLATE),
    )
    # Written byte for byte as Ollama lays a model out, by code that shares nothing with Herd's store.
    write_ollama_model(
        root,
        ("registry.ollama.ai", "someone", "handmade", "v1"),
        write_tiny_llama(ggufs / "handmade.gguf", seed=3),
        template=HANDMADE_TEMPLATE,
        system="You are terse.",
        params={"stop": ["<|end|>"], "temperature": 0, "num_predict": 12},
    )
    return root


# Beside the session's other temporaries, named after the pytest process so two sessions never share it.
SESSION_PROBE_FILE = Path(tempfile.gettempdir()) / f"herd-tests-{os.getpid()}" / "repack-probe.json"


@contextmanager
def start_stack(
    models_dir: Path, run_dir: Path, env: dict[str, str] | None = None, **overrides: object
) -> Iterator[Stack]:
    """A whole stack on free ports; stopped on exit."""
    settings = StackSettings(
        OLLAMA_HOST=f"127.0.0.1:{free_port()}",
        HERD_API_PORT=free_port(),
        HERD_REDIS_PORT=free_port(),
        # Workers serve their own /metrics on the ports right after it (up to 8 workers).
        HERD_METRICS_PORT=free_port_run(9),
        HERD_RUN_DIR=run_dir,
        OLLAMA_MODELS=models_dir,
        HERD_API_PROCESSES=1,
        **overrides,
    )
    # Test registries listen on 127.0.0.1, which the store worker refuses unless HERD_REGISTRY_ALLOW names it.
    # A short drain: a stack stop lets running generations finish for HERD_DRAIN_SECONDS (30 s by default),
    # and a stream a test left running (its client gone with the API) would hold the teardown that long.
    # One repack verdict file for the whole session: each model file is probed once, not once per store.
    base = {
        "HERD_HEARTBEAT": "0.5",
        "HERD_REGISTRY_ALLOW": "127.0.0.1",
        "HERD_DRAIN_SECONDS": "5",
        "HERD_REPACK_PROBE_FILE": str(SESSION_PROBE_FILE),
    }
    stack = Stack(settings, env={**base, **(env or {})})
    try:
        stack.start()
        yield stack
    finally:
        _kill(stack)


def _kill(stack: Stack) -> None:
    """SIGKILL every process of the stack, then let stop() release its run dir.

    A graceful stop (nginx and the API, then each worker's drain, then Redis) takes 2-3 s, and the suite
    starts dozens of stacks; teardown only needs their processes gone. The graceful stop is tested where
    it is the subject (tests/reliability/test_shutdown.py, tests/e2e/test_herd_up.py), and a stack a test
    stopped itself, or under supervised(), has stopped gracefully before this runs.
    """
    for proc in (stack.nginx, stack.api, *stack.workers, stack.store_worker, stack.redis):
        if proc is not None:
            proc.stop(10, signal.SIGKILL)
    stack.stop()


@pytest.fixture(scope="session")
def stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One slot, so that tests can hold the worker busy with one stream and see the next request wait.
    env = {"HERD_WORKER_TIMEOUT": "3", "OLLAMA_NUM_PARALLEL": "1"}
    with start_stack(models_dir, tmp_path_factory.mktemp("run"), env=env) as s:
        yield s


@pytest.fixture(scope="session")
def base_url(stack: Stack) -> str:
    return stack.settings.base_url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(stack.settings.stack_redis_url, decode_responses=True)
    yield r
    r.close()
