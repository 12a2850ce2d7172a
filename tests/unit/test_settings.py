"""A bad environment value stops a process at start with a message naming the variable."""

from __future__ import annotations

import pytest

from app.settings import ApiSettings
from herd.settings import SettingsError, load_settings
from workers.settings import WorkerSettings
from workers.store.worker import StoreWorkerSettings


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (ApiSettings, "OLLAMA_MAX_QUEUE", "lots"),
        (ApiSettings, "OLLAMA_MAX_QUEUE", "0"),
        (ApiSettings, "HERD_WORKER_TIMEOUT", "-1"),
        (WorkerSettings, "OLLAMA_NUM_PARALLEL", "-1"),
        (WorkerSettings, "OLLAMA_NUM_PARALLEL", "65"),
        (WorkerSettings, "HERD_MEMORY_LIMIT", "lots"),
        (WorkerSettings, "HERD_MEMORY_LIMIT", "0GiB"),
        (WorkerSettings, "OLLAMA_MAX_LOADED_MODELS", "many"),
        (WorkerSettings, "OLLAMA_KEEP_ALIVE", "forever"),
        (WorkerSettings, "OLLAMA_CONTEXT_LENGTH", "8"),
        # The store worker reads the registry settings once at start: a bad CA file stops it there.
        (StoreWorkerSettings, "HERD_CA_BUNDLE", "/nonexistent/corporate-ca.pem"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    cls: type[ApiSettings | WorkerSettings | StoreWorkerSettings],
    name: str,
    value: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings(cls)
    assert name in str(info.value.code) and repr(value) in str(info.value.code)


def test_ollama_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OLLAMA_MAX_QUEUE", "OLLAMA_KEEP_ALIVE", "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_LOADED_MODELS"):
        monkeypatch.delenv(name, raising=False)
    api = load_settings(ApiSettings)
    worker = load_settings(WorkerSettings)
    assert api.max_queue == 512
    assert worker.keep_alive_default == "5m" and worker.max_loaded_models == 3
    assert worker.context_length == 4096
    assert worker.num_parallel == 0  # automatic: 4 per model when they fit, else 1
    assert worker.memory_limit is None


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("24GiB", 24 << 30),
        ("8000MB", 8_000_000_000),
        ("512", 512),
        ("1.5 gib", 3 << 29),
        ("100MiB", 100 << 20),
    ],
)
def test_memory_limit_sizes(monkeypatch: pytest.MonkeyPatch, text: str, size: int) -> None:
    monkeypatch.setenv("HERD_MEMORY_LIMIT", text)
    assert load_settings(WorkerSettings).memory_limit == size


def test_debug_flag_reads_like_ollama(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_DEBUG", "1")
    assert load_settings(ApiSettings).debug is True
    monkeypatch.setenv("OLLAMA_DEBUG", "false")
    assert load_settings(ApiSettings).debug is False
